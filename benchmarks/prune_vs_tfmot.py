"""Magnitude pruning to 80%: tfopt's default `prune` recipe vs tfmot, from the same float baseline.

Usage: python benchmarks/prune_vs_tfmot.py [--epochs-baseline 30] [--timing-rounds 15] [--seeds 3]

MNIST-1D, `mnist1d_cnn`. One float baseline is trained (Adam 2e-3, batch 64) and its weights are
the start of both pruned runs. tfopt prunes with the defaults of the `prune` recipe step
(PolynomialDecay 0 -> 80% over the first half of 15 epochs, ~20 mask updates, Adam 2e-3) and strips.
tfmot (benchmarks/_tfmot_prune.py, a separate process with a tf_keras copy of the model) uses
prune_low_magnitude with the same PolynomialDecay (begin/end step, power, frequency), the
UpdatePruningStep callback, the same epochs, batch size and learning rate, then strip_pruning.

Each pruned run is repeated with `--seeds` seeds (shuffling order; same baseline weights) on both
sides: one run's test accuracy on 1,000 samples moves by about a point between seeds, more than the
difference being measured. Columns: mean test accuracy of the Keras models (and each seed's); kernel sparsity; size and gzip size of the float32
TFLite file of the stripped model; train-step time relative to an unpruned fit of the same model
in the same process (fastest of interleaved one-epoch fits after a warm-up epoch, and the median paired ratio).
Each pruned model's difference from the float baseline (and tfopt's from tfmot's, seed by seed)
is paired on the same test samples with tfopt._stats.paired_delta (95% bootstrap interval).
Writes benchmarks/results/prune_vs_tfmot.{json,md} and prints the table.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tfopt
from tfopt._backend import import_keras
from tfopt._pipeline import StepContext
from tfopt._stats import PairedDelta, correct, paired_delta
from tfopt.bench import file_sizes
from tfopt.config._steps import PruneStepConfig
from tfopt.prune import _step, prune, sparsity

keras = import_keras()
HERE = Path(__file__).parent


def compile_model(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def correct_on_test(model, data) -> np.ndarray:
    """Per-test-sample correctness (paired deltas compare two models sample by sample)."""
    return correct(model.predict(data.x_test, batch_size=256, verbose=0), data.y_test)


def paired_deltas(right) -> dict:
    """Per seed: each pruned model vs the float baseline, and tfopt vs tfmot (same seed)."""
    out = {}
    for key in ("tfopt", "tfmot"):
        out[key] = [paired_delta(right["float"][0], r).to_dict() for r in right[key]]
    out["tfopt_minus_tfmot"] = [
        paired_delta(b, a).to_dict() for a, b in zip(right["tfopt"], right["tfmot"])
    ]
    return out


def tflite_sizes(model, path) -> dict:
    tfopt.export.tflite(model, path, quantization="float32")
    return file_sizes(path)


def time_epochs(dense, pruned, x, y, batch, rounds):
    """Times one-epoch fits of both models, interleaved (the order alternates each round).

    Returns (min dense seconds, min pruned seconds, median of the per-round ratios). On a shared,
    overloaded machine the fastest epoch of each model is the one least disturbed by other
    processes, so the ratio of the minimums is the headline number; the median of the paired
    ratios is reported beside it.
    """
    for m in (dense, pruned):
        m.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # warm-up (tracing)
    t_dense, t_pruned = [], []
    for r in range(rounds):
        for m in (dense, pruned) if r % 2 == 0 else (pruned, dense):
            t = time.perf_counter()
            m.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            (t_dense if m is dense else t_pruned).append(time.perf_counter() - t)
    ratio = statistics.median(p / d for p, d in zip(t_pruned, t_dense))
    return min(t_dense), min(t_pruned), ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-baseline", type=int, default=30)
    parser.add_argument("--timing-rounds", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    started = time.time()
    keras.utils.set_random_seed(0)
    data = tfopt.data.load("mnist1d")
    batch, base_lr = 64, 2e-3
    cfg = PruneStepConfig()  # the default recipe: target 0.8, polynomial, 15 epochs, Adam 2e-3
    steps_per_epoch = math.ceil(len(data.x_train) / batch)
    total = cfg.epochs * steps_per_epoch
    schedule = _step.make_schedule(cfg, total)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tfopt.models.get("mnist1d_cnn")
        compile_model(base, base_lr)
        print(f"[1/4] float baseline: {args.epochs_baseline} epochs", flush=True)
        base.fit(*data.train, batch_size=batch, epochs=args.epochs_baseline, verbose=0)
        weights = base.get_weights()
        right = {"float": [correct_on_test(base, data)], "tfopt": []}
        rows = {
            "float": {
                "accuracy": float(right["float"][0].mean()),
                "sparsity": sparsity(base).global_sparsity,
                **tflite_sizes(base, tmp / "float.tflite"),
            }
        }

        seeds = list(range(1, args.seeds + 1))
        print(f"[2/4] tfopt: {schedule!r}, {cfg.epochs} epochs, seeds {seeds}", flush=True)
        accs, sparsities = [], []
        for i, seed in enumerate(seeds):
            keras.utils.set_random_seed(seed)
            start = keras.models.clone_model(base)
            start.set_weights(weights)
            ctx = StepContext(data=data, run_dir=tmp / f"run{seed}", batch_size=batch, verbose=0)
            stripped = _step.run(cfg, start, ctx)
            right["tfopt"].append(correct_on_test(stripped, data))
            accs.append(float(right["tfopt"][-1].mean()))
            sparsities.append(sparsity(stripped).global_sparsity)
            if i == 0:
                rows["tfopt"] = tflite_sizes(stripped, tmp / "tfopt.tflite")
        rows["tfopt"].update(accuracies=accs, sparsities=sparsities)

        print("[3/4] train-step time: tfopt pruned vs unpruned, interleaved", flush=True)
        dense = keras.models.clone_model(base)
        dense.set_weights(weights)
        pruned = prune(base, schedule)
        for m in (dense, pruned):
            compile_model(m, cfg.learning_rate)
        t_dense, t_pruned, ratio = time_epochs(
            dense, pruned, *data.train, batch, args.timing_rounds
        )
        rows["tfopt"].update(
            step_ms_dense=1000 * t_dense / steps_per_epoch,
            step_ms_pruned=1000 * t_pruned / steps_per_epoch,
            step_time_ratio=t_pruned / t_dense,
            step_time_ratio_median_paired=ratio,
        )
        rows["float"]["step_time_ratio"] = 1.0

        print("[4/4] tfmot in a subprocess (tf_keras)", flush=True)
        npz = tmp / "tfmot_in.npz"
        np.savez(
            npz,
            x_train=data.x_train,
            y_train=data.y_train,
            x_test=data.x_test,
            y_test=data.y_test,
            n_weights=len(weights),
            **{f"w{i}": w for i, w in enumerate(weights)},
            epochs=cfg.epochs,
            batch_size=batch,
            learning_rate=cfg.learning_rate,
            final_sparsity=schedule.final_sparsity,
            end_step=schedule.end_step,
            power=schedule.power,
            frequency=schedule.frequency,
            timing_rounds=args.timing_rounds,
            seeds=np.array(seeds),
        )
        out_json = tmp / "tfmot_out.json"
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        proc = subprocess.run(
            [sys.executable, str(HERE / "_tfmot_prune.py"), str(npz), str(out_json)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"tfmot subprocess failed with exit code {proc.returncode}")
        tfm = json.loads(out_json.read_text())
        right["tfmot"] = []
        for wrong in tfm["wrong"]:
            right["tfmot"].append(np.ones(len(data.y_test), bool))
            right["tfmot"][-1][wrong] = False
        rows["tfmot"] = {
            "accuracies": tfm["accuracies"],
            "sparsities": tfm["sparsities"],
            "bytes": tfm["tflite_bytes"],
            "gzip_bytes": tfm["tflite_gzip_bytes"],
            "step_ms_dense": tfm["step_ms_dense"],
            "step_ms_pruned": tfm["step_ms_pruned"],
            "step_time_ratio": tfm["step_time_ratio"],
            "step_time_ratio_median_paired": tfm["step_time_ratio_median_paired"],
        }

    for r in rows.values():  # the float baseline is one run
        r.setdefault("accuracies", [r.get("accuracy")])
        r.setdefault("sparsities", [r.get("sparsity")])
        r["accuracy"] = statistics.mean(r["accuracies"])
        r["accuracy_std"] = statistics.pstdev(r["accuracies"])
        r["sparsity"] = statistics.mean(r["sparsities"])
    dense_gz = rows["float"]["gzip_bytes"]
    names = {
        "float": "float baseline (dense)",
        "tfopt": "tfopt 80% (default prune step)",
        "tfmot": f"tfmot {tfm['versions']['tfmot']} 80%",
    }
    lines = [
        "| model | test acc (mean ± std, each seed) | Δ acc vs float (pt, mean of seeds) | kernel sparsity | TFLite KB | gzip KB "
        "| gzip smaller vs dense | train step vs unpruned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ("float", "tfopt", "tfmot"):
        r = rows[key]
        step = (
            "1.00x"
            if key == "float"
            else f"{r['step_time_ratio']:.2f}x ({r['step_ms_pruned']:.2f} vs "
            f"{r['step_ms_dense']:.2f} ms; paired median {r['step_time_ratio_median_paired']:.2f}x)"
        )
        acc = f"{r['accuracy']:.4f}"
        if len(r["accuracies"]) > 1:
            each = ", ".join(f"{a:.3f}" for a in r["accuracies"])
            acc += f" ± {r['accuracy_std']:.4f} ({each})"
        lines.append(
            f"| {names[key]} | {acc} | "
            f"{100 * (r['accuracy'] - rows['float']['accuracy']):+.2f} | {r['sparsity']:.1%} | "
            f"{r['bytes'] / 1024:.1f} | {r['gzip_bytes'] / 1024:.1f} | "
            f"{dense_gz / r['gzip_bytes']:.2f}x | {step} |"
        )
    header = (
        f"Pruning to 80% on MNIST-1D ({len(data.x_train)} train / {len(data.x_test)} test), "
        f"mnist1d_cnn, float baseline {args.epochs_baseline} epochs; both pruned runs "
        f"(seeds {seeds}, mean ± std): "
        f"{cfg.epochs} epochs, Adam {cfg.learning_rate}, batch {batch}, {schedule!r}. "
        f"Wall time {time.time() - started:.0f} s on {os.cpu_count()} shared CPU cores "
        f"(load average {os.getloadavg()[0]:.1f}). Train step vs unpruned: ratio of the fastest of "
        f"{args.timing_rounds} interleaved one-epoch fits of each model in the same process (ms "
        "per step), and the median of the per-round paired ratios.\n\n"
    )
    deltas = paired_deltas(right)

    def each(key):
        return "; ".join(
            f"seed {s} {PairedDelta(**d).as_points()}" for s, d in zip(seeds, deltas[key])
        )

    table = "\n".join(lines) + (
        "\n\nPaired on the same 1,000 test samples (tfopt._stats.paired_delta, 95% paired "
        f"bootstrap interval): tfopt vs float: {each('tfopt')}. tfmot vs float: "
        f"{each('tfmot')}. tfopt − tfmot: {each('tfopt_minus_tfmot')}."
    )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "prune_vs_tfmot.md").write_text(header + table + "\n")
    result = {
        "rows": rows,
        "schedule": {"class": type(schedule).__name__, **schedule.get_config()},
        "config": cfg.model_dump(),
        "epochs_baseline": args.epochs_baseline,
        "seeds": seeds,
        "paired_deltas": deltas,
        "tfmot_versions": tfm["versions"],
        "seconds": round(time.time() - started, 1),
    }
    (out / "prune_vs_tfmot.json").write_text(json.dumps(result, indent=2))
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
