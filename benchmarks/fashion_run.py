"""`tfopt run fashion` measured: Fashion-MNIST, fashion_cnn, float and int8 TFLite, QAT int8 in
TFLite Micro, beside the published Fashion-MNIST table.

The float model is the packaged config's baseline (tfopt/configs/fashion.yaml: tfopt's trainer and
the config's ``train:`` section), trained once and cached by `_fashion.baseline`
(benchmarks/cache/). On the 10,000 test images: the Keras float accuracy with its Wilson 95%
interval; the float and PTQ int8 TFLite files (exported as `tfopt run fashion` exports them,
500 representative training images) through LiteRT, each with its paired delta vs the Keras float
model (`tfopt._stats.paired_delta`: bootstrap 95% interval, McNemar p); tfopt QAT int8 (the recipe
step ``{type: qat}``, fine-tuned ``--qat-epochs`` from the float weights) the same way; gzip
sizes, params, MACs. Then the QAT int8 file (the PTQ int8 file with ``--qat-epochs 0``) in
TFLite Micro (`tfopt.bench.micro_measure`): arena, flash and argmax agreement with LiteRT on
``--tflm-samples`` test images (default all 10,000).

Usage: python benchmarks/fashion_run.py [--qat-epochs N] [--tflm-samples N] [--render]
Writes benchmarks/results/fashion_run.{json,md} and prints the table (--render: only rewrite the
.md from the saved .json).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _fashion import baseline, fashion_config

import tfopt
from tfopt._measure import count
from tfopt._stats import accuracy_interval, correct, paired_delta
from tfopt.bench._runners import TFLiteRunner

OUT = Path(__file__).parent / "results"
SOURCE = (
    "the benchmark table of Fashion-MNIST's README (zalandoresearch/fashion-mnist, as installed "
    "by Debian's dataset-fashion-mnist: /usr/share/doc/dataset-fashion-mnist/README.md.gz), "
    "whose authors note they have not tested the submitted results"
)
# rows quoted from that table: (classifier, preprocessing, Fashion test accuracy)
PUBLISHED = [
    ("2 Conv <100K parameters", "None", 0.925),
    ("2 Conv ~113K parameters", "Normalization", 0.922),
    ("2 Conv+3 FC ~500K parameters", "Augmentation, batch normalization", 0.934),
    ("3 Conv+pooling+2 FC+dropout", "None", 0.926),
    ("MobileNet", "augmentation (horizontal flips)", 0.950),
    ("ResNet18", "Normalization, random flips, translation, rotation", 0.949),
]


def litert_outputs(path, x) -> np.ndarray:
    return TFLiteRunner(path).predict(x)


def row(name, fmt, outputs, y, reference, path=None, model=None) -> dict:
    ok = correct(outputs, y)
    acc = accuracy_interval(ok)
    r = {"model": name, "format": fmt, "accuracy": acc.value, "low": acc.low, "high": acc.high}
    r["delta_vs_float"] = None if reference is None else paired_delta(reference, ok).to_dict()
    if path is not None:
        r.update(tfopt.bench.file_sizes(path))
    if model is not None:
        r.update({k: v for k, v in count(model).items() if k in ("params", "macs")})
    return r, ok


def export(model, path, fmt, data, rep):
    """Exports as `tfopt run` does (`tfopt._pipeline._export`): checked on validation images."""
    calibrate = {"representative_data": rep} if fmt == "tflite-int8" else {}
    return tfopt.export.export(model, path, format=fmt, check_data=data.x_val[:500], **calibrate)


def qat_model(model, data, epochs: int, tmp: Path, seed: int):
    """tfopt's QAT recipe step, as `tfopt run` with ``steps: [{type: qat, epochs: N}]`` runs it."""
    from tfopt._steps import StepContext, run_steps
    from tfopt.config import validate_steps

    cfg = fashion_config(seed=seed)
    steps = validate_steps([{"type": "qat", "epochs": epochs}])
    ctx = StepContext(
        data=data,
        run_dir=tmp,
        baseline=model,
        batch_size=cfg.train.batch_size,
        verbose=2,
        seed=seed,
        tensorboard=False,
    )
    return run_steps(steps, model, ctx, seed=seed)


def tflm(edge: dict, x, samples: int) -> dict:
    """TFLite Micro on the int8 file: arena, flash, argmax agreement with LiteRT's ``outputs``."""
    started, n = time.time(), min(samples, len(x))
    content = edge["path"].read_bytes()
    micro = tfopt.bench.micro_measure(content, x[:n], logits=edge["outputs"][:n], limit=n)
    return {**micro, "file": edge["file"], "seconds": round(time.time() - started, 1)}


def measure(args) -> dict:
    started, load = time.time(), os.getloadavg()[0]
    model, data, record = baseline("fashion_cnn", seed=args.seed)
    x, y = data.x_test, data.y_test
    rep = data.x_train[: fashion_config().export.representative_samples]
    rows = []
    base, ref = row("fashion_cnn", "keras", model.predict(x, verbose=0), y, None, model=model)
    rows.append(base)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt in ("tflite", "tflite-int8"):
            art = export(model, tmp / f"{fmt}.tflite", fmt, data, rep)
            out = litert_outputs(art.path, x)
            rows.append(row("fashion_cnn", fmt, out, y, ref, art.path)[0])
        edge = {"file": "PTQ int8", "path": art.path, "outputs": out}
        qat_seconds = None
        if args.qat_epochs:
            qat_started = time.time()
            q = qat_model(model, data, args.qat_epochs, tmp, args.seed)
            qat_seconds = round(time.time() - qat_started, 1)
            art = export(q, tmp / "qat.tflite", "tflite-int8", data, rep)
            out = litert_outputs(art.path, x)
            name = f"fashion_cnn, tfopt QAT ({args.qat_epochs} epoch)"
            rows.append(row(name, "tflite-int8", out, y, ref, art.path)[0])
            edge = {"file": "QAT int8", "path": art.path, "outputs": out}
        micro = tflm(edge, x, args.tflm_samples)
    return {
        "command": "python benchmarks/fashion_run.py " + " ".join(sys.argv[1:]),
        "dataset": repr(data),
        "test_samples": len(y),
        "data_source": data.info.get("source"),
        "baseline": {k: v for k, v in record.items() if k != "history"},
        "baseline_val_accuracy": record["history"].get("val_accuracy", [None])[-1],
        "qat_epochs": args.qat_epochs,
        "qat_seconds": qat_seconds,
        "rows": rows,
        "tflm": micro,
        "published": [
            {"classifier": c, "preprocessing": p, "accuracy": a} for c, p, a in PUBLISHED
        ],
        "published_source": SOURCE,
        "seconds": round(time.time() - started),
        "cpus": os.cpu_count(),
        "load_average_start": round(load, 1),
    }


def _pt(d) -> str:
    if d is None:
        return "(reference)"
    return (
        f"{100 * d['delta']:+.2f} pt [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}], "
        f"p={d['p_value']:.2g}"
    )


def render(res: dict) -> str:
    b = res["baseline"]
    lines = [
        f"Fashion-MNIST test set ({res['test_samples']:,} images), `tfopt run fashion`'s model "
        "and exports, "
        f"measured by `{res['command'].strip()}` on {res['cpus']} CPU cores (load average "
        f"{res['load_average_start']} at the start). Float baseline: tfopt's trainer with the "
        f"`fashion` config's `train:` section, {b['epochs']} epochs in {b['seconds'] / 60:.0f} min "
        f"(cached in `{b['path']}`). Accuracy: 95% Wilson interval; delta: vs the Keras float "
        "model on the same images, 95% paired bootstrap interval and McNemar's exact p.",
        "",
        "| model | format | test accuracy [95% CI] | delta vs float | params | MACs | gzip size |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        size = f"{r['gzip_bytes'] / 1024:.1f} KiB" if "gzip_bytes" in r else "-"
        params = f"{r['params']:,}" if "params" in r else "same"
        macs = f"{r['macs'] / 1e6:.1f} M" if "macs" in r else "same"
        lines.append(
            f"| {r['model']} | {r['format']} | {r['accuracy']:.4f} [{r['low']:.4f}, "
            f"{r['high']:.4f}] | {_pt(r['delta_vs_float'])} | {params} | {macs} | {size} |"
        )
    lines += ["", f"Published rows, quoted from {res['published_source']}:", ""]
    lines += ["| classifier | preprocessing | test accuracy |", "|---|---|---|"]
    for p in res["published"]:
        lines.append(f"| {p['classifier']} | {p['preprocessing']} | {p['accuracy']:.3f} |")
    m = res["tflm"]
    if "skipped" in m:
        lines += ["", f"TFLite Micro: skipped ({m['skipped']})."]
    else:
        lines += [
            "",
            f"TFLite Micro, the {m['file']} file: arena {m['arena_bytes'] / 1024:.1f} KiB, flash "
            f"{m['flash_bytes'] / 1024:.1f} KiB, argmax agreement with LiteRT "
            f"{m['tflm_agreement']:.4f} on {m['samples']:,} test images ({m['seconds']:.0f} s).",
        ]
    return "\n".join(lines) + "\n"


def record_shipped(res: dict) -> None:
    """The ``fashion`` entry of shipped_configs.json (the drop each shipped config states in its
    header, checked by tests/test_config.py): Keras float minus the int8 TFLite file, the
    smallest artifact `tfopt run fashion` exports."""
    path = OUT / "shipped_configs.json"
    shipped = json.loads(path.read_text()) if path.exists() else {}
    keras_row, int8 = res["rows"][0], res["rows"][2]
    shipped["fashion"] = {
        "baseline_accuracy": keras_row["accuracy"],
        "final_artifact": "baseline:tflite-int8",
        "final_accuracy": int8["accuracy"],
        "drop_points": round(100 * (keras_row["accuracy"] - int8["accuracy"]), 1),
        "gzip_bytes": int8["gzip_bytes"],
        "seconds": round(res["baseline"]["seconds"]),
        "measured_by": "benchmarks/fashion_run.py (its baseline is trained once and cached)",
    }
    path.write_text(json.dumps(shipped, indent=2) + "\n")


def main() -> None:
    from tfopt.cli import show_progress

    show_progress()  # the QAT step's progress lines, as `tfopt run` shows them
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--tflm-samples", type=int, default=10_000)
    p.add_argument("--render", action="store_true")
    args = p.parse_args()
    OUT.mkdir(exist_ok=True)
    path = OUT / "fashion_run.json"
    if args.render:
        res = json.loads(path.read_text())
    else:
        res = measure(args)
        path.write_text(json.dumps(res, indent=2, default=str) + "\n")
        record_shipped(res)
    text = render(res)
    (OUT / "fashion_run.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
