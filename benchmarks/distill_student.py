"""Distillation's effect on a half-width student, and weight clustering, on MNIST-1D.

Usage: python benchmarks/distill_student.py [--epochs 30] [--seeds 0,1,2,3,4] [--cluster-epochs 3]

Teacher: `mnist1d_cnn` (width 32, dense 128) trained once (Adam 2e-3, batch 64, seed 0).
Student: `mnist1d_cnn` with width=16, dense=64 (about a quarter of the parameters), trained for the
same number of epochs with the same optimizer, batch size and initial weights per seed, once on the
labels only and with `tfopt.distill.Distiller` (its defaults, temperature 4 and alpha 0.1, and
one other common setting, T=2 and alpha=0.5, and the defaults plus feature distillation of the
`fc1` layer through a learned 64->128 projection; teacher outputs precomputed). Accuracy is on the 1000 test samples, mean (and each seed) reported.

Clustering: the trained teacher is clustered with `tfopt.cluster.cluster(model, 16)` (per layer,
then per channel), its centroids fine-tuned for `--cluster-epochs` epochs (Adam 1e-4), stripped and
exported to float32 TFLite; accuracy is measured through the TFLite interpreter, sizes are the
.tflite file and its gzip (level 9), compared with the float teacher's TFLite file.
Writes benchmarks/results/distill_student.{json,md} and prints the table.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import tfopt
from tfopt._backend import import_keras
from tfopt.bench import file_sizes
from tfopt.bench._runners import TFLiteRunner

keras = import_keras()
HERE = Path(__file__).parent
LR, BATCH = 2e-3, 64
# The Distiller's defaults, and one other common setting (softer: more weight on the labels).
DISTILL = {
    "Distiller defaults (T=4, alpha=0.1)": {},
    "Distiller T=2, alpha=0.5": {"temperature": 2.0, "alpha": 0.5},
    "Distiller defaults + feature distillation fc1 (64->128 projection)": {
        "features": {"fc1": "fc1"}
    },
}


def compile_model(model, lr=LR):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(predict, data) -> float:
    return float(np.mean(np.argmax(predict(data.x_test), -1) == data.y_test))


def keras_accuracy(model, data) -> float:
    return accuracy(lambda x: model.predict(x, batch_size=256, verbose=0), data)


def tflite_row(name, model, data, tmp, float_gzip=None) -> dict:
    path = Path(tmp) / f"{name}.tflite"
    tfopt.export.tflite(model, path, quantization="float32", check_data=data.x_val)
    sizes = file_sizes(path)
    runner = TFLiteRunner(path)
    row = {
        "model": name,
        "params": int(model.count_params()),
        "tflite_accuracy": accuracy(runner.predict, data),
        "tflite_bytes": sizes["bytes"],
        "gzip_bytes": sizes["gzip_bytes"],
    }
    row["gzip_ratio_vs_float"] = (float_gzip or sizes["gzip_bytes"]) / sizes["gzip_bytes"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--cluster-epochs", type=int, default=3)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    data = tfopt.data.load("mnist1d")

    keras.utils.set_random_seed(0)
    teacher = tfopt.models.get("mnist1d_cnn")
    compile_model(teacher)
    teacher.fit(*data.train, epochs=args.epochs, batch_size=BATCH, verbose=0)
    teacher_acc = keras_accuracy(teacher, data)
    print(
        f"teacher: {teacher.count_params():,} params, test accuracy {teacher_acc:.4f}", flush=True
    )

    runs = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        init = tfopt.models.get("mnist1d_cnn", width=16, dense=64)
        weights = init.get_weights()
        result = {"seed": seed}
        for mode in ("labels only", *DISTILL):
            keras.utils.set_random_seed(seed)  # same shuffling for every mode
            student = tfopt.models.get("mnist1d_cnn", width=16, dense=64)
            student.set_weights(weights)
            t0 = time.time()
            if mode in DISTILL:
                d = tfopt.distill.Distiller(
                    teacher=teacher, student=student, precompute_teacher=True, **DISTILL[mode]
                )
                d.compile(keras.optimizers.Adam(LR), metrics=["accuracy"])
                d.fit(*data.train, epochs=args.epochs, batch_size=BATCH, verbose=0)
            else:
                compile_model(student)
                student.fit(*data.train, epochs=args.epochs, batch_size=BATCH, verbose=0)
            result[mode] = keras_accuracy(student, data)
            result[f"{mode} seconds"] = round(time.time() - t0, 1)
            print(
                f"seed {seed} {mode}: {result[mode]:.4f} ({result[f'{mode} seconds']} s)",
                flush=True,
            )
        result["student_params"] = int(student.count_params())
        runs.append(result)

    distill_rows = [
        {
            "model": "teacher mnist1d_cnn (width 32, dense 128)",
            "params": int(teacher.count_params()),
            "accuracy": teacher_acc,
            "per_seed": [teacher_acc],
        },
    ]
    for mode in ("labels only", *DISTILL):
        accs = [r[mode] for r in runs]
        distill_rows.append(
            {
                "model": f"student (width 16, dense 64), {mode}",
                "params": runs[0]["student_params"],
                "accuracy": statistics.mean(accs),
                "per_seed": accs,
            }
        )

    cluster_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = tflite_row("float teacher", teacher, data, tmp)
        cluster_rows.append(base)
        for per_channel in (False, True):
            clustered = tfopt.cluster.cluster(teacher, 16, per_channel=per_channel)
            before_ft = keras_accuracy(clustered, data)
            compile_model(clustered, 1e-4)
            clustered.fit(*data.train, epochs=args.cluster_epochs, batch_size=BATCH, verbose=0)
            small = tfopt.cluster.strip(clustered)
            name = f"cluster 16 {'per channel' if per_channel else 'per layer'}"
            row = tflite_row(name, small, data, tmp, float_gzip=base["gzip_bytes"])
            row["keras_accuracy_before_finetune"] = before_ft
            row["max_distinct_values"] = max(
                tfopt.cluster.distinct_values(small, per_channel=per_channel).values()
            )
            cluster_rows.append(row)
            print(f"{name}: {row['tflite_accuracy']:.4f}", flush=True)

    lines = [
        f"MNIST-1D, {args.epochs} epochs, Adam {LR}, batch {BATCH}; seeds {seeds} "
        f"(mean test accuracy, per-seed in brackets).",
        "",
        "| model | params | test accuracy |",
        "|---|---:|---:|",
    ]
    for r in distill_rows:
        seeds_txt = ", ".join(f"{a:.3f}" for a in r["per_seed"])
        lines.append(f"| {r['model']} | {r['params']:,} | {r['accuracy']:.4f} [{seeds_txt}] |")
    lines += [
        "",
        f"Weight clustering of the teacher ({args.cluster_epochs} fine-tuning epochs, Adam 1e-4), "
        "float32 TFLite, accuracy through the TFLite interpreter:",
        "",
        "| model | distinct values / kernel | TFLite accuracy | TFLite bytes | gzip bytes | gzip vs float |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in cluster_rows:
        distinct = r.get("max_distinct_values", "all")
        lines.append(
            f"| {r['model']} | {distinct} | {r['tflite_accuracy']:.4f} | {r['tflite_bytes']:,} | "
            f"{r['gzip_bytes']:,} | {r['gzip_ratio_vs_float']:.2f}x |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    result = {
        "args": vars(args),
        "seconds": round(time.time() - started, 1),
        "distill": distill_rows,
        "runs": runs,
        "cluster": cluster_rows,
        "note": "Measured on a shared 2-core machine under load; accuracies do not depend on load.",
    }
    (out / "distill_student.json").write_text(json.dumps(result, indent=2))
    (out / "distill_student.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
