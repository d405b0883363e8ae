"""`tfopt export MODEL.keras --format F [--out PATH] [--data NAME]`."""

from __future__ import annotations

from pathlib import Path

from tfopt import _formats as formats


def add_parser(sub):
    names = ", ".join(formats.names())
    p = sub.add_parser(
        "export",
        help="export a .keras model (TFLite, ONNX, SavedModel, Triton, TensorRT), parity-checked",
        description="Export MODEL.keras in FORMAT and check the artifact against the Keras model "
        "(argmax agreement and max abs difference on sample inputs). The check's result is printed "
        f"and written to <out>.export.json. Formats: {names}.",
    )
    p.add_argument("model", help="the .keras model file")
    p.add_argument(
        "--format",
        "-f",
        default="tflite",
        metavar="F",
        help=f"export format (default: tflite): {names}",
    )
    p.add_argument(
        "--out",
        "-o",
        help="output file or directory (default: next to MODEL, e.g. "
        "m.keras -> m_int8.tflite, m.onnx, m_savedmodel/, m_triton/); a file name without a "
        "suffix gets the format's (out/tflm -> out/tflm.tflite); tflm also writes its C source "
        "named after it (out/a.tflite -> out/a_model_data.cc and .h)",
    )
    p.add_argument(
        "--data",
        help="dataset name (or .npz with x_train/y_train/x_test/y_test) whose "
        "training inputs calibrate int8 and whose validation inputs are the check inputs",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=200,
        help="representative samples for int8 calibration (default: 200)",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (onnx, triton --backend onnx, tensorrt)")
    p.add_argument(
        "--backend",
        choices=("onnx", "savedmodel"),
        help="Triton backend (default: onnx, the ONNX Runtime backend; savedmodel is the "
        "TensorFlow backend, deprecated by Triton in 25.03)",
    )
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="TensorRT precision")
    p.add_argument(
        "--select-tf-ops",
        action="store_true",
        help="TFLite: allow TF ops outside the builtins (needs the Flex delegate at runtime)",
    )
    p.add_argument(
        "--fixed-batch",
        type=int,
        help="TFLite: fix the batch size (lets RNNs convert with builtin ops only)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        help="lowest accepted argmax agreement with Keras (default: by format)",
    )
    p.add_argument(
        "--atol",
        type=float,
        help="largest accepted max abs difference, as a fraction "
        "of the largest Keras output (default: by format)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (and a SavedModel directory or Triton version); "
        "without it an existing file is never replaced",
    )
    return p


def _load_data(name: str):
    from pathlib import Path

    from tfopt import data

    if name.endswith(".npz"):
        return data.from_npz(Path(name))
    return data.load(name)


def _output_path(out, fmt, *, overwrite: bool):
    """``out`` with the format's suffix when it has none, checked as `export` checks it (its
    report ``<out>.export.json`` too): one line, before anything loads or is written."""
    from tfopt.export._export import check_output

    if fmt.suffix and out.suffix == "" and not out.is_dir() and not out.is_symlink():
        out = out.with_name(out.name + fmt.suffix)
    report = Path(f"{out}.export.json")
    return check_output(
        out, fmt.name, overwrite=overwrite, extra=[report], arg="--out", flag="--overwrite"
    )


def _needs_calibration(fmt, precision, model) -> bool:
    """The export needs representative data: a full-integer format of a model without QAT."""
    from tfopt.export._common import is_qat
    from tfopt.quantize._lowbit import MODES

    static = fmt.exporter == "lowbit" and MODES[fmt.options["mode"]].kind == "static"
    integer = fmt.quantization in ("int8", "int16x8") and fmt.exporter != "tensorrt"
    return (static or integer) and not is_qat(model)


def main(args) -> int:
    from pathlib import Path

    fmt = formats.get(args.format)  # raises with a did-you-mean before TensorFlow loads
    if args.samples < 1:
        raise ValueError(
            f"--samples must be >= 1: int8 calibration needs inputs (a few hundred recommended). "
            f"Received: --samples {args.samples}"
        )
    from tfopt import export, models

    model = models.load(args.model)
    out = Path(args.out) if args.out else export.default_path(args.model, args.format)
    out = _output_path(out, fmt, overwrite=args.overwrite)
    if args.data is None and _needs_calibration(fmt, args.precision, model):
        raise ValueError(
            f"--format {fmt.name} calibrates activation ranges on training inputs: pass --data "
            "NAME or FILE.npz (the model's training data, e.g. --data mnist1d), or export a "
            "tfopt QAT model, which carries its ranges"
        )
    options = {}
    if args.data:
        ds = _load_data(args.data)
        from tfopt.data._checks import check_model_data

        check_model_data(model, ds, what=args.data, classes=False)
        if fmt.calibrates:
            options["representative_data"] = ds.x_train[: args.samples]
        if fmt.options.get("precision") == "int8" or args.precision == "int8":
            options["calibration_data"] = ds.x_train[: args.samples]
        options["check_data"] = ds.x_val[:256]
    named = {
        "opset": args.opset,
        "backend": args.backend,
        "precision": args.precision,
        "fixed_batch": args.fixed_batch,
        "min_agreement": args.min_agreement,
        "atol": args.atol,
    }
    options.update({k: v for k, v in named.items() if v is not None})
    if args.select_tf_ops:
        options["select_tf_ops"] = True
    art = export.export(model, out, format=args.format, overwrite=args.overwrite, **options)
    report = art.write_json(Path(f"{art.path}.export.json"))
    check = art.check
    if check.get("passed") is None:
        verdict = f"check skipped: {check.get('skipped')}"
    else:
        verdict = (
            f"check passed: argmax agreement {check['argmax_agreement']:.1%} on "
            f"{check['samples']} inputs, max abs diff {check['max_abs_diff']:.3g}"
        )
    print(f"{art.format}: {art.path} ({art.bytes / 1024:.1f} KiB); {verdict}")
    if art.info.get("c_files"):
        arena = art.info["arena"]["total"]
        print(
            f"C source: {', '.join(art.info['c_files'])} (16-byte aligned array, byte-identical "
            f"to the .tflite); TFLM arena {arena} bytes; ops: {', '.join(art.info['ops'])}"
        )
    print(f"report: {report}")
    return 0
