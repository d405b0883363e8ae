"""Edge below int8: MLPerf Tiny reference models (int8 flash vs the references) and int4 / mixed
precision / low-rank on MNIST-1D, every accuracy measured through LiteRT.

Part 1, MLPerf Tiny: each reference architecture of `tfopt.models` (``tiny_dscnn``,
``tiny_resnet8``, ``tiny_mobilenet_v1_025``, ``tiny_fc_autoencoder``) is built at its reference
input shape; its params (tfopt._measure) and its full-int8 flatbuffer (post-training, 100 random
calibration inputs; the size does not depend on the weights' values) are compared with MLPerf
Tiny's reference int8 model sizes (DS-CNN 53 KB, ResNet-8 96 KB, MobileNet 325 KB, FC-AE 270 KB).
Whether TFLite Micro loads and runs the int8 file is recorded. Then the classifiers are trained on
offline data at other input shapes (DS-CNN on MNIST-1D (40, 1), ResNet-8 and MobileNetV1 on
scikit-learn digits 8x8x1) and their int8 test accuracy is measured through LiteRT.

Part 2, MNIST-1D: the zoo CNN (`mnist1d_cnn`) is trained, then exported as float32, int8
(TFLite converter), through ai-edge-quantizer as int4 weight-only (``tflite-w4``), dynamic
int4, w8a8, w8a16, QAT with int4 weights (``qat(bits=...)``, written as INT4 by the converter), and a mixed 4/8-bit model whose per-layer bits `tfopt.quantize.choose_bits` picks on
the validation data under a 0.5 pt budget; plus low-rank factorization (energy 0.9, fine-tuned)
followed by int8 and int4. Test accuracy through LiteRT, file bytes, gzip bytes.

Usage: python benchmarks/edge_lowbit.py [--quick] [--epochs 30]
Writes benchmarks/results/edge_lowbit.{json,md} and prints the tables.
"""

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import tfopt
from tfopt._measure import count_macs, count_params
from tfopt.bench import TFLiteRunner
from tfopt.models._tiny import REFERENCE_KB
from tfopt.quantize._lowbit import weight_types

keras = tfopt.models._zoo.keras

# published definitions' params (their Keras code, built at the reference input shapes)
REFERENCE_PARAMS = {
    "tiny_dscnn": 24908,
    "tiny_resnet8": 78666,
    "tiny_mobilenet_v1_025": 221794,
    "tiny_fc_autoencoder": 269992,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few epochs, for a smoke run")
    p.add_argument("--epochs", type=int, default=30, help="MNIST-1D baseline epochs")
    p.add_argument("--tiny-epochs", type=int, default=8, help="epochs of the MLPerf Tiny models")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--markdown-only", action="store_true", help="re-render the .md from the .json")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.tiny_epochs = 6, 4
    return args


def compile_model(model, lr=2e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def acc_tflite(path, x, y) -> float:
    out = TFLiteRunner(Path(path).read_bytes()).predict(x)
    return float(np.mean(out.argmax(-1) == y))


def gz(path) -> int:
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def tflm_runs(path) -> str:
    try:
        import tflite_micro
    except ImportError:
        return "tflite-micro not installed"
    try:
        micro = tflite_micro.runtime.Interpreter.from_bytes(Path(path).read_bytes())
        d = micro.get_input_details(0)
        micro.set_input(np.zeros(d["shape"], d["dtype"]), 0)
        micro.invoke()
        return "yes"
    except Exception as e:  # the runtime's own message, one line
        return "no: " + str(e).strip().splitlines()[-1][:80]


def tiny_reference(tmp: Path) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for name, ref_kb in REFERENCE_KB.items():
        model = tfopt.models.get(name)
        shape = model.input_shape[1:]
        rep = rng.normal(size=(100, *shape)).astype("float32")
        path = tmp / f"{name}_int8.tflite"
        t = time.time()
        art = tfopt.export.tflite(
            model, path, quantization="int8", representative_data=rep, min_agreement=0.0
        )
        rows.append(
            {
                "model": name,
                "input": list(shape),
                "params": count_params(model),
                "reference_params": REFERENCE_PARAMS[name],
                "macs": count_macs(model),
                "int8_bytes": art.bytes,
                "reference_kb": ref_kb,
                "ratio": art.bytes / (ref_kb * 1000),
                "tflm": tflm_runs(path),
                "seconds": round(time.time() - t, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def tiny_trained(tmp: Path, mnist1d, digits, epochs: int) -> list[dict]:
    rows = []
    # (model, data, epochs): at batch 32 enough steps for BatchNorm's moving statistics
    # (momentum 0.99) to forget their initial values; MobileNetV1's five stride-2 stages leave
    # 1x1 of an 8x8 digit, so it is measured at its reference shape only
    cases = [
        ("tiny_dscnn", mnist1d, epochs),
        ("tiny_resnet8", digits, 2 * epochs),
    ]
    for name, data, n_epochs in cases:
        keras.utils.set_random_seed(0)
        model = tfopt.models.get(name, input_shape=data.input_shape, num_classes=data.num_classes)
        compile_model(model)
        t = time.time()
        model.fit(*data.train, batch_size=32, epochs=n_epochs, validation_data=data.val, verbose=0)
        path = tmp / f"{name}_{data.name}_int8.tflite"
        art = tfopt.export.tflite(
            model,
            path,
            quantization="int8",
            representative_data=data.x_train[:200],
            check_data=data.x_val,
            min_agreement=0.0,
        )
        keras_acc = float(np.mean(model.predict(data.x_test, verbose=0).argmax(-1) == data.y_test))
        rows.append(
            {
                "model": name,
                "data": data.name,
                "input": list(data.input_shape),
                "params": model.count_params(),
                "keras_test": keras_acc,
                "int8_test": acc_tflite(path, data.x_test, data.y_test),
                "int8_bytes": art.bytes,
                "agreement": art.check["argmax_agreement"],
                "seconds": round(time.time() - t, 1),
            }
        )
        print(rows[-1], flush=True)
    # the autoencoder: reconstruction of MNIST-1D signals (it is not a classifier)
    keras.utils.set_random_seed(0)
    ae = tfopt.models.get("tiny_fc_autoencoder", input_shape=mnist1d.input_shape)
    ae.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse")
    ae.fit(mnist1d.x_train, mnist1d.x_train, batch_size=32, epochs=epochs, verbose=0)
    path = tmp / "tiny_fc_autoencoder_int8.tflite"
    art = tfopt.export.tflite(
        ae,
        path,
        quantization="int8",
        representative_data=mnist1d.x_train[:200],
        check_data=mnist1d.x_val,
        min_agreement=0.0,
    )
    x = mnist1d.x_test
    mse_keras = float(np.mean((ae.predict(x, verbose=0) - x) ** 2))
    mse_int8 = float(np.mean((TFLiteRunner(path.read_bytes()).predict(x) - x) ** 2))
    rows.append(
        {
            "model": "tiny_fc_autoencoder",
            "data": "mnist1d (reconstruction)",
            "input": list(mnist1d.input_shape),
            "params": ae.count_params(),
            "keras_test_mse": mse_keras,
            "int8_test_mse": mse_int8,
            "input_variance": float(np.var(x)),
            "int8_bytes": art.bytes,
        }
    )
    print(rows[-1], flush=True)
    return rows


def lowbit_mnist1d(tmp: Path, data, epochs: int) -> tuple[list[dict], dict]:
    keras.utils.set_random_seed(0)
    model = tfopt.models.get("mnist1d_cnn")
    compile_model(model)
    model.fit(*data.train, batch_size=64, epochs=epochs, validation_data=data.val, verbose=0)
    xt, yt = data.x_test, data.y_test
    rep = data.x_train[:200]
    names = [x.name for x in model.layers] + [f"quant_{x.name}" for x in model.layers]
    rows = []

    def add(label, art, note=""):
        rows.append(
            {
                "artifact": label,
                "format": art.format,
                "test": acc_tflite(art.path, xt, yt),
                "bytes": art.bytes,
                "gzip_bytes": gz(art.path),
                "agreement": art.check["argmax_agreement"],
                "types": weight_types(art.path.read_bytes(), names),
                "note": note,
            }
        )
        print(rows[-1], flush=True)

    def export(m, fmt, stem, **kw):
        # min_agreement=0: every artifact is measured and its agreement reported, none rejected
        return tfopt.export.export(
            m, tmp / f"{stem}.tflite", format=fmt, check_data=data.x_val, min_agreement=0.0, **kw
        )

    add("float32", export(model, "tflite", "f32"))
    add("int8 (converter)", export(model, "tflite-int8", "int8", representative_data=rep))
    add("int4 weight-only", export(model, "tflite-w4", "w4"))
    add("dynamic int4", export(model, "tflite-dynamic-w4", "dw4"))
    add("w8a8 (ai-edge-quantizer)", export(model, "tflite-w8a8", "w8a8", representative_data=rep))
    add("w8a16", export(model, "tflite-w8a16", "w8a16", representative_data=rep))
    # QAT with int4 weights for every layer but the logits: the TFLite converter writes INT4
    q = tfopt.quantize.qat(model, bits={".": 4, "logits": 8})
    compile_model(q, 5e-4)
    q.fit(*data.train, batch_size=64, epochs=max(2, epochs // 5), verbose=0)
    add("QAT int4 weights (converter), int8 activations", export(q, "tflite-int8", "qat4"))
    t = time.time()
    table = tfopt.quantize.sensitivity(model, data.val, mode="w8")
    plan = tfopt.quantize.choose_bits(model, data.val, max_accuracy_drop=0.005, table=table)
    picked = round(time.time() - t, 1)
    mixed = tfopt.export.lowbit(
        model,
        tmp / "mixed.tflite",
        mode="w8",
        bits=plan.bits,
        check_data=data.x_val,
        min_agreement=0.0,
    )
    add("mixed 4/8 (choose_bits, val budget 0.5 pt)", mixed, f"bits {plan.bits}")
    # low-rank + fine-tune, then int8 and int4
    small = tfopt.lowrank.factorize(model, energy=0.9)
    report = small.tfopt_report
    compile_model(small, 5e-4)
    small.fit(*data.train, batch_size=64, epochs=max(2, epochs // 5), verbose=0)
    note = f"params {report.details['params_before']} -> {report.details['params_after']}"
    add(
        "lowrank(0.9) + int8",
        export(small, "tflite-int8", "lr_int8", representative_data=rep),
        note,
    )
    add("lowrank(0.9) + int4 weight-only", export(small, "tflite-w4", "lr_w4"), note)
    extra = {
        "keras_test": float(np.mean(model.predict(xt, verbose=0).argmax(-1) == yt)),
        "sensitivity": table.to_dict(),
        "plan": plan.to_dict(),
        "choose_bits_seconds": picked,
        "lowrank": report.to_dict(),
    }
    return rows, extra


def markdown(res: dict) -> str:
    kb = 1000
    lines = [
        "# Edge below int8 (benchmarks/edge_lowbit.py)",
        "",
        f"{res['mode']} run (MNIST-1D CNN {res['epochs']} epochs, MLPerf Tiny models "
        f"{res['tiny_epochs']}), {res['seconds']:.0f} s, load average {res['load']:.1f} on "
        f"{os.cpu_count()} cores. Sizes are raw flatbuffer bytes (1 KB = 1000 B).",
        "",
        "MLPerf Tiny reference architectures at the reference input shapes, full int8 "
        "(post-training):",
        "",
        "| model | input | params (published def.) | MACs | int8 file | MLPerf Tiny int8 | runs in TFLM |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in res["tiny_reference"]:
        lines.append(
            f"| {r['model']} | {tuple(r['input'])} | {r['params']:,} ({r['reference_params']:,}) "
            f"| {r['macs']:,} | {r['int8_bytes'] / kb:.1f} KB | {r['reference_kb']} KB | {r['tflm']} |"
        )
    lines += [
        "",
        "Trained on offline data at other input shapes (test accuracy through LiteRT):",
        "",
        "| model | data | input | params | Keras test | int8 test | int8 file |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in res["tiny_trained"]:
        if "int8_test" in r:
            lines.append(
                f"| {r['model']} | {r['data']} | {tuple(r['input'])} | {r['params']:,} | "
                f"{r['keras_test']:.4f} | {r['int8_test']:.4f} | {r['int8_bytes'] / kb:.1f} KB |"
            )
        else:
            lines.append(
                f"| {r['model']} | {r['data']} | {tuple(r['input'])} | {r['params']:,} | "
                f"MSE {r['keras_test_mse']:.4f} | MSE {r['int8_test_mse']:.4f} (input var "
                f"{r['input_variance']:.3f}) | {r['int8_bytes'] / kb:.1f} KB |"
            )
    f32 = res["mnist1d"][0]
    lines += [
        "",
        f"MNIST-1D CNN (Keras test {res['mnist1d_extra']['keras_test']:.4f}), test accuracy "
        "through LiteRT; the ratio is gzip against the float32 file's gzip:",
        "",
        "| artifact | format | test | bytes | gzip | gzip ratio | argmax agreement | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["mnist1d"]:
        lines.append(
            f"| {r['artifact']} | {r['format']} | {r['test']:.4f} | {r['bytes']:,} | "
            f"{r['gzip_bytes']:,} | {f32['gzip_bytes'] / r['gzip_bytes']:.1f}x | "
            f"{r['agreement']:.3f} | {r['note']} |"
        )
    lines += [
        "",
        "Runtimes: int4 weight-only and dynamic (hybrid) files run in LiteRT, not in TFLite Micro "
        "(its DEQUANTIZE takes no int4, hybrid ops are refused); w8a8 / w8a16 and the QAT int4 "
        "file (INT4 Conv2D/FullyConnected weights, int8 activations) run in both. Agreement is "
        "argmax agreement with the Keras model on the validation inputs.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown_only:  # re-render the tables of a finished run
        res = json.loads((Path(args.out) / "edge_lowbit.json").read_text())
        (Path(args.out) / "edge_lowbit.md").write_text(markdown(res))
        return 0
    start = time.time()
    mnist1d = tfopt.data.load("mnist1d")
    digits = tfopt.data.load("digits")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ref = tiny_reference(tmp)
        trained = tiny_trained(tmp, mnist1d, digits, args.tiny_epochs)
        rows, extra = lowbit_mnist1d(tmp, mnist1d, args.epochs)
    res = {
        "mode": "quick" if args.quick else "full",
        "epochs": args.epochs,
        "tiny_epochs": args.tiny_epochs,
        "seconds": time.time() - start,
        "load": os.getloadavg()[0],
        "tiny_reference": ref,
        "tiny_trained": trained,
        "mnist1d": rows,
        "mnist1d_extra": extra,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "edge_lowbit.json").write_text(json.dumps(res, indent=1, default=str))
    text = markdown(res)
    (out / "edge_lowbit.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
