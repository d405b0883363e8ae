"""Channel pruning vs magnitude pruning: accuracy, params, MACs, TFLite size and latency.

Two tasks (``--task``):

* ``mnist1d`` (the default): a residual Conv1D network with BatchNorm
  (`tfopt.models.get("mnist1d_resnet")`) trained on MNIST-1D (generated offline) for ``--epochs``;
* ``fashion``: the mobile-class `fashion_mobilenet` (MobileNetV2-style: expand / depthwise /
  project blocks with residual Adds) on Fashion-MNIST (real data: `apt-get install
  dataset-fashion-mnist`), trained by the `fashion` config's trainer for ``--epochs`` and cached
  by benchmarks/_fashion.py (`python benchmarks/_fashion.py fashion_mobilenet 0 train.epochs=N`
  trains it ahead).

Then, from the same trained baseline and with the same fine-tuning budget:

* channel pruning: `tfopt.prune.prune_channels_iterative(macs_reduction=0.5, allocation="global",
  round_to=16)`, i.e. 50% of the MACs removed in ``--steps`` rounds with fine-tuning after each,
  channel counts in multiples of 16 (what XNNPack's float32 and int8 kernels tile by on AVX-512);
* magnitude pruning at the same parameter count: `tfopt.prune.prune` with a `ConstantSparsity`
  chosen so that the number of non-zero weights equals the channel-pruned model's parameter
  count, fine-tuned for the same number of epochs, then `tfopt.prune.strip`.

Each model is exported to float32 and int8 (post-training, 200 calibration samples) TFLite files,
evaluated on every test sample through the TFLite interpreter, and timed at batch 1 with one
thread; the timings of all artifacts are interleaved (round-robin) so that load on the shared
machine hits them alike.

Usage: python benchmarks/channel_pruning.py [--task mnist1d] [--epochs 20] [--finetune-epochs 8]
       [--steps 2] [--macs-reduction 0.5 0.7] [--allocation global] [--round-to 16]
Writes benchmarks/results/channel_pruning.{json,md} (``--task fashion``:
channel_pruning_fashion.{json,md}) and prints the table.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import tfopt
from tfopt._stats import PairedDelta, correct, paired_delta
from tfopt._training import fit_arrays
from tfopt.bench import TFLiteRunner, file_sizes

keras = tfopt.prune._channels.keras


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mnist1d", choices=["mnist1d", "fashion"])
    p.add_argument("--epochs", type=int, default=20, help="baseline training epochs")
    p.add_argument("--finetune-epochs", type=int, default=8, help="fine-tuning epochs (total)")
    p.add_argument("--steps", type=int, default=2, help="channel-pruning rounds")
    p.add_argument(
        "--macs-reduction",
        type=float,
        nargs="+",
        default=[0.5, 0.7],
        help="MAC reductions to prune to (the first sets the magnitude-pruning row)",
    )
    p.add_argument("--importance", default="l1")
    p.add_argument(
        "--allocation",
        default="global",
        choices=["uniform", "global"],
        help="how prune_channels spreads the pruning over the channel groups",
    )
    p.add_argument(
        "--round-to",
        type=int,
        default=16,
        help="channel-count multiple (0: none); 16 suits XNNPack's AVX-512 kernels",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="baseline learning rate")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--latency-rounds", type=int, default=10)
    p.add_argument("--latency-runs", type=int, default=100, help="timed runs per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=128, help="mnist1d_resnet's stem width")
    return p.parse_args(argv)


def compile_model(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(model, data) -> float:
    x, y = data
    return float(np.mean(model.predict(x, verbose=0, batch_size=256).argmax(-1) == y))


def nonzero(model) -> int:
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def magnitude_prune(baseline, target_nonzero, data, args):
    """tfopt.prune.prune (ConstantSparsity) at the sparsity giving ``target_nonzero`` weights."""
    from tfopt.prune import ConstantSparsity, prune, strip

    probe = prune(baseline, ConstantSparsity(0.5))
    wrapped = set(probe.pruning_report.changed)
    prunable = sum(
        int(np.prod(layer.kernel.shape)) for layer in baseline.layers if layer.name in wrapped
    )
    sparsity = (baseline.count_params() - target_nonzero) / prunable
    steps_per_epoch = int(np.ceil(len(data.x_train) / args.batch_size))
    pruned = prune(baseline, ConstantSparsity(sparsity, begin_step=0, frequency=steps_per_epoch))
    compile_model(pruned, args.finetune_lr)
    fit_arrays(  # whole batches, as prune_channels_iterative's fine-tuning (oneDNN, see there)
        pruned,
        *data.train,
        batch_size=args.batch_size,
        epochs=args.finetune_epochs,
        validation_data=data.val,
        verbose=0,
    )
    return strip(pruned), sparsity


def export_all(name, model, data, tmp):
    arts = {}
    for quant in ("float32", "int8"):
        path = Path(tmp) / f"{name}_{quant}.tflite"
        tfopt.export.tflite(
            model,
            path,
            quantization=quant,
            representative_data=data.x_train[:200],
            check_data=data.x_val,
        )
        runner = TFLiteRunner(path, num_threads=1)
        right = correct(runner.predict(data.x_test), data.y_test)
        arts[quant] = {
            "path": path,
            "runner": runner,
            "accuracy": float(right.mean()),
            "correct": right,  # per test sample: deltas are paired (tfopt._stats)
            **file_sizes(path),
        }
    return arts


def interleaved_latency(runners: dict, sample, rounds: int, runs: int) -> dict:
    times = {k: [] for k in runners}
    for r in runners.values():
        for _ in range(20):
            r.invoke(sample)
    for _ in range(rounds):
        for key, r in runners.items():
            for _ in range(runs):
                t = time.perf_counter()
                r.invoke(sample)
                times[key].append((time.perf_counter() - t) * 1e3)
    return {k: {"p50": float(np.median(v)), "mean": float(np.mean(v))} for k, v in times.items()}


def load_baseline(args):
    """(trained baseline, data, training seconds) of ``args.task``."""
    if args.task == "fashion":  # trained by the `fashion` config's trainer, cached
        sys.path.insert(0, str(Path(__file__).parent))
        from _fashion import baseline

        model, data, record = baseline(
            "fashion_mobilenet", args.seed, overrides=(f"train.epochs={args.epochs}",), verbose=2
        )
        return model, data, record["seconds"]
    keras.utils.set_random_seed(args.seed)
    data = tfopt.data.load("mnist1d")
    model = tfopt.models.get(
        "mnist1d_resnet",
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        width=args.width,
    )
    compile_model(model, args.lr)
    t = time.time()
    model.fit(
        *data.train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=data.val,
        verbose=0,
    )
    return model, data, time.time() - t


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    baseline, data, t_base = load_baseline(args)
    keras.utils.set_random_seed(args.seed)
    print(
        f"baseline: {args.epochs} epochs in {t_base:.0f}s, test acc {accuracy(baseline, data.test):.4f}",
        flush=True,
    )

    # Channel pruning: the same fine-tuning budget, split over the rounds.
    per_step = max(1, args.finetune_epochs // args.steps)
    channel = {}
    for target in args.macs_reduction:
        t = time.time()
        pruned, plans = tfopt.prune.prune_channels_iterative(
            baseline,
            data.train,
            macs_reduction=target,
            steps=args.steps,
            epochs_per_step=per_step,
            learning_rate=args.finetune_lr,
            importance=args.importance,
            round_to=args.round_to or None,
            allocation=args.allocation,
            validation_data=data.val,
            batch_size=args.batch_size,
        )
        channel[target] = (pruned, plans, time.time() - t)
        print(
            f"channel pruning to -{target:.0%} MACs: {time.time() - t:.0f}s, "
            f"test acc {accuracy(pruned, data.test):.4f}",
            flush=True,
        )
    first = args.macs_reduction[0]
    print(channel[first][1][-1], flush=True)

    t = time.time()
    ft_args = argparse.Namespace(**{**vars(args), "finetune_epochs": per_step * args.steps})
    magnitude, sparsity = magnitude_prune(baseline, channel[first][0].count_params(), data, ft_args)
    t_mag = time.time() - t
    print(
        f"magnitude pruning (sparsity {sparsity:.3f}): {t_mag:.0f}s, "
        f"test acc {accuracy(magnitude, data.test):.4f}",
        flush=True,
    )

    macs0 = channel[first][1][0].macs_before
    models = {"baseline": (baseline, macs0)}
    for target, (pruned, plans, _) in channel.items():
        models[f"channel-pruned -{target:.0%} MACs"] = (pruned, plans[-1].macs_after)
    models[f"magnitude-pruned (params of -{first:.0%} MACs)"] = (magnitude, macs0)
    with tempfile.TemporaryDirectory() as tmp:
        arts = {name: export_all(name, m, data, tmp) for name, (m, _) in models.items()}
        runners = {(n, q): a["runner"] for n, d in arts.items() for q, a in d.items()}
        lat = interleaved_latency(runners, data.x_test[:1], args.latency_rounds, args.latency_runs)

    rows = []
    for name, (model, macs) in models.items():
        for quant in ("float32", "int8"):
            a = arts[name][quant]
            b = arts["baseline"][quant]
            rows.append(
                {
                    "model": name,
                    "tflite": quant,
                    "keras_accuracy": accuracy(model, data.test),
                    "tflite_accuracy": a["accuracy"],
                    "delta_vs_baseline": paired_delta(b["correct"], a["correct"]).to_dict(),
                    "params": int(model.count_params()),
                    "nonzero_params": nonzero(model),
                    "macs": int(macs),
                    "bytes": a["bytes"],
                    "gzip_bytes": a["gzip_bytes"],
                    "latency_p50_ms": lat[(name, quant)]["p50"],
                    "latency_mean_ms": lat[(name, quant)]["mean"],
                    "speedup": lat[("baseline", quant)]["p50"] / lat[(name, quant)]["p50"],
                    "size_ratio": b["bytes"] / a["bytes"],
                }
            )

    lines = [
        "| model | TFLite | test acc (TFLite) | Δ vs baseline [95% CI] | params (non-zero) | MACs | raw bytes | gzip bytes "
        "| p50 latency ms | speedup | smaller |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tflite']} | {r['tflite_accuracy']:.4f} "
            f"| {PairedDelta(**r['delta_vs_baseline']).as_points()} | {r['params']:,} "
            f"({r['nonzero_params']:,}) | {r['macs']:,} | {r['bytes']:,} | {r['gzip_bytes']:,} | "
            f"{r['latency_p50_ms']:.4f} | {r['speedup']:.2f}x | {r['size_ratio']:.2f}x |"
        )
    checks = {}
    for name in models:
        if not name.startswith("channel"):
            continue
        for q in ("float32", "int8"):
            b = next(r for r in rows if r["model"] == "baseline" and r["tflite"] == q)
            c = next(r for r in rows if r["model"] == name and r["tflite"] == q)
            checks[f"{name}, {q}"] = {
                "speedup_ge_1.8": c["speedup"] >= 1.8,
                "smaller_ge_2": c["size_ratio"] >= 2.0,
                "accuracy_drop_le_1pt": b["tflite_accuracy"] - c["tflite_accuracy"] <= 0.01,
                # the stricter reading: the whole paired 95% interval is above -1 pt
                "interval_above_-1pt": PairedDelta(**c["delta_vs_baseline"]).within(0.01),
            }
    load = os.getloadavg()[0]
    ratios = {f"{t:.2f}": [round(p.ratio, 4) for p in channel[t][1]] for t in channel}
    macs_removed = {
        f"{t:.2f}": f"{1 - channel[t][1][-1].macs_after / channel[t][1][0].macs_before:.2%}"
        for t in channel
    }
    what = (
        f"Fashion-MNIST (`fashion_mobilenet`, {len(data.x_train):,} training images, "
        f"{len(data.x_test):,} test images), baseline trained {args.epochs} epochs by the "
        "`fashion` config's trainer (benchmarks/_fashion.py)"
        if args.task == "fashion"
        else f"MNIST-1D (`mnist1d_resnet`, width {args.width}, test set of {len(data.x_test)}), "
        f"baseline trained {args.epochs} epochs"
    )
    header = (
        f"Channel pruning on {what}. Channel pruning: "
        f"`prune_channels_iterative(macs_reduction=...)` in {args.steps} rounds x {per_step} "
        f"fine-tuning epochs (allocation {args.allocation!r}, round_to={args.round_to or None}, "
        f"importance {args.importance!r}; fraction of channels removed per round {ratios}; "
        f"MACs removed {macs_removed}). Magnitude pruning: `tfopt.prune.prune` + "
        f"`ConstantSparsity({sparsity:.3f})` for the same {per_step * args.steps} epochs, "
        f"`strip`ped, with as many non-zero weights as the -{first:.0%} MACs channel-pruned "
        f"model has parameters. TFLite int8 = post-training quantization (200 samples). Latency: "
        f"batch 1, 1 thread, p50 of {args.latency_rounds}x{args.latency_runs} runs interleaved "
        f"across artifacts, on a shared {os.cpu_count()}-core machine (load average {load:.1f}). "
        f"Speedup, smaller and Δ are vs the baseline in the same TFLite format; Δ is paired on "
        f"the same test samples (tfopt._stats.paired_delta, 95% bootstrap interval). Wall time "
        f"{time.time() - started:.0f} s.\n\n"
    )
    table = "\n".join(lines)
    verdict = "\n\nTargets (vs baseline, same TFLite format):\n" + "\n".join(
        f"- {name}: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in c.items())
        for name, c in checks.items()
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stem = "channel_pruning" if args.task == "mnist1d" else f"channel_pruning_{args.task}"
    command = "python benchmarks/channel_pruning.py" + "".join(f" {a}" for a in sys.argv[1:])
    (out / f"{stem}.md").write_text(header + table + verdict + f"\n\n`{command}`\n")
    (out / f"{stem}.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "rows": rows,
                "checks": checks,
                "plans": {f"{t:.2f}": [p.to_dict() for p in channel[t][1]] for t in channel},
                "ratios": ratios,
                "macs_removed": macs_removed,
                "magnitude_sparsity": sparsity,
                "seconds": {
                    "baseline": t_base,
                    "channel": {f"{t:.2f}": channel[t][2] for t in channel},
                    "magnitude": t_mag,
                    "total": time.time() - started,
                },
                "load_average": load,
            },
            indent=2,
            default=str,
        )
    )
    print(header + table + verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
