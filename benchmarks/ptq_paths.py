"""int8 post-training quantization by two paths: inside the TFLite converter (``tflite-int8``) and
float .tflite then LiteRT Quantizer (``tflite-w8a8``, Google's supported path since PTQ inside the
converter was deprecated).

Per dataset: the zoo CNN is trained; both paths get the same calibration samples (the first
``--calibration`` training samples); test accuracy is measured through LiteRT, with the paired
difference (LiteRT Quantizer - converter, and each vs the float32 .tflite) from `tfopt._stats`;
file bytes and gzip bytes; single-sample latency (1 thread), the paths interleaved round by round,
median over rounds. MNIST-1D always; Fashion-MNIST when `tfopt.data.load("fashion_mnist")` works
here (otherwise the reason is printed and recorded).

Usage: python benchmarks/ptq_paths.py [--epochs 20] [--rounds 5] [--quick]
Writes benchmarks/results/ptq_paths.{json,md} and prints the table.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import tfopt
from tfopt._stats import accuracy_interval, correct, paired_delta
from tfopt.bench import TFLiteRunner, file_sizes

keras = tfopt.keras
RESULTS = Path(__file__).parent / "results"
PATHS = {  # label -> tfopt export format
    "float32": "tflite",
    "int8, TFLite converter": "tflite-int8",
    "int8, LiteRT Quantizer": "tflite-w8a8",
}
MODELS = {"mnist1d": ("mnist1d_cnn", {}), "fashion_mnist": ("fashion_cnn", {})}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--calibration", type=int, default=500, help="calibration samples")
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    p.add_argument("--samples", type=int, default=200, help="samples timed per round")
    p.add_argument("--datasets", default="mnist1d,fashion_mnist")
    p.add_argument("--quick", action="store_true", help="2 epochs, 2 rounds: a smoke run")
    p.add_argument("--markdown-only", action="store_true", help="re-render the .md from the .json")
    return p.parse_args(argv)


def train(name: str, data, epochs: int):
    builder, options = MODELS[name]
    keras.utils.set_random_seed(0)
    model = tfopt.models.get(
        builder, input_shape=data.input_shape, num_classes=data.num_classes, **options
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    n = len(data.x_train) // 64 * 64  # whole batches (TF 2.21's oneDNN conv backward crash)
    model.fit(data.x_train[:n], data.y_train[:n], batch_size=64, epochs=epochs, verbose=0)
    return model


def latency_ms(runners: dict, x: np.ndarray, rounds: int) -> dict:
    """Median over rounds of each runner's mean single-sample time; runners interleaved."""
    per_round = {k: [] for k in runners}
    for r in runners.values():  # warm-up
        r.invoke(x[:1])
    for _ in range(rounds):
        for k, r in runners.items():
            t = time.perf_counter()
            for i in range(len(x)):
                r.invoke(x[i : i + 1])
            per_round[k].append((time.perf_counter() - t) * 1000 / len(x))
    return {k: float(np.median(v)) for k, v in per_round.items()}


def trained(name: str, args):
    """MNIST-1D: the zoo CNN trained here for ``--epochs``. Fashion-MNIST: the 0.9313 baseline of
    `benchmarks/fashion_run.py` (30 epochs with tfopt's trainer; cached, trained if missing)."""
    if name == "fashion_mnist":
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from _fashion import baseline

        model, data, _ = baseline()
        return model, data
    data = tfopt.data.load(name)
    return train(name, data, args.epochs), data


def measure(name: str, args, tmp: Path) -> dict:
    model, data = trained(name, args)
    rep = data.x_train[: args.calibration]
    rows, runners, right = {}, {}, {}
    for label, fmt in PATHS.items():
        path = tmp / f"{name}_{fmt}.tflite"
        kw = {} if fmt == "tflite" else {"representative_data": rep}
        t = time.perf_counter()
        tfopt.export.export(model, path, format=fmt, check_data=data.x_val, min_agreement=0.0, **kw)
        seconds = time.perf_counter() - t
        runners[label] = TFLiteRunner(path)
        right[label] = correct(runners[label].predict(data.x_test), data.y_test)
        interval = accuracy_interval(right[label])
        rows[label] = {
            "format": fmt,
            "accuracy": float(right[label].mean()),
            "accuracy_interval": [interval.low, interval.high],
            **file_sizes(path),
            "export_seconds": round(seconds, 1),
        }
    lat = latency_ms(runners, data.x_test[: args.samples], args.rounds)
    f32, conv, lrq = PATHS
    for label in PATHS:
        rows[label]["latency_ms"] = lat[label]
        rows[label]["delta_vs_float32"] = paired_delta(right[f32], right[label]).to_dict()
    delta = paired_delta(right[conv], right[lrq])
    return {
        "dataset": name,
        "model": MODELS[name][0],
        "test_samples": len(data.y_test),
        "rows": rows,
        "litert_minus_converter": delta.to_dict(),
        "litert_minus_converter_text": delta.as_points(),
    }


def markdown(results: list[dict], skipped: dict, meta: dict) -> str:
    lines = [
        "| data | path | format | accuracy (95% CI) | vs float32 (pt, 95% CI) | bytes | gzip bytes "
        "| latency ms |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for res in results:
        for label, r in res["rows"].items():
            lo, hi = r["accuracy_interval"]
            d = r["delta_vs_float32"]
            lines.append(
                f"| {res['dataset']} | {label} | `{r['format']}` | {r['accuracy']:.4f} "
                f"[{lo:.4f}, {hi:.4f}] | {100 * d['delta']:+.2f} [{100 * d['low']:+.2f}, "
                f"{100 * d['high']:+.2f}] | {r['bytes']:,} | {r['gzip_bytes']:,} "
                f"| {r['latency_ms']:.4f} |"
            )
    lines.append("")
    for res in results:
        lines.append(
            f"{res['dataset']} ({res['model']}, {res['test_samples']} test samples): LiteRT "
            f"Quantizer - converter = {res['litert_minus_converter_text']} "
            f"(McNemar p = {res['litert_minus_converter']['p_value']:.3g})."
        )
    for name, why in skipped.items():
        lines.append(f"{name}: not measured ({why if len(why) < 100 else why[:97] + '...'}).")
    lines.append(
        f"\nMNIST-1D: trained {meta['epochs']} epochs here; Fashion-MNIST: the cached 30-epoch "
        f"baseline of benchmarks/fashion_run.py. {meta['calibration']} calibration samples, "
        f"latency: median of "
        f"{meta['rounds']} interleaved rounds of {meta['samples']} single-sample calls, 1 thread. "
        f"Load average at start / end of the last run: {meta['load_start']} / {meta['load_end']}."
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.markdown_only:
        payload = json.loads((RESULTS / "ptq_paths.json").read_text())
        md = markdown(payload["results"], payload["skipped"], payload["meta"])
        (RESULTS / "ptq_paths.md").write_text("## ptq_paths\n\n" + md)
        print(md)
        return
    if args.quick:
        args.epochs, args.rounds = 2, 2
    meta = {k: getattr(args, k) for k in ("epochs", "calibration", "rounds", "samples")}
    meta["load_start"] = [round(v, 1) for v in os.getloadavg()]
    tmp = Path(tempfile.mkdtemp(prefix="tfopt_ptq_paths_"))
    results, skipped = [], {}
    for name in args.datasets.split(","):
        try:
            tfopt.data.load(name)
        except Exception as e:  # e.g. Fashion-MNIST offline and not cached
            skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            print(f"skipping {name}: {skipped[name]}")
            continue
        results.append(measure(name, args, tmp))
    meta["load_end"] = [round(v, 1) for v in os.getloadavg()]
    if (RESULTS / "ptq_paths.json").exists():  # keep the datasets this run did not measure
        earlier = json.loads((RESULTS / "ptq_paths.json").read_text())
        measured = {r["dataset"] for r in results}
        results = [r for r in earlier["results"] if r["dataset"] not in measured] + results
    md = markdown(results, skipped, meta)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ptq_paths.md").write_text("## ptq_paths\n\n" + md)
    payload = {"meta": meta, "results": results, "skipped": skipped}
    (RESULTS / "ptq_paths.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(md)


if __name__ == "__main__":
    main()
