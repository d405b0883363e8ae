"""The training agent on MNIST-1D (issue 14), search part: `tfopt tune` from the zoo builder.

1. ``tfopt tune`` (the embedded default config: MNIST-1D, ``mnist1d_cnn``, the default search
   space, Hyperband) with ``--workers 2`` and a time budget; target: the best trial's test accuracy
   >= 0.94 (MNIST-1D's published CNN) within 20 minutes on 2 cores.
2. ``tfopt run best.yaml`` retrains the best trial from scratch; target: its test accuracy within
   1 point of the trial's.
3. Search throughput: the same small random search (fixed epochs) with ``--workers 1`` and
   ``--workers 2``; completed trials per hour over the span from the first trial's start to the
   last trial's end; target: 2 workers >= 1.7x one.

Everything runs through the CLI in subprocesses. Test accuracies are measured on MNIST-1D's test
split (never seen by the search, which scores val accuracy). Writes
benchmarks/results/training_agent_search.json and .md (README block ``training_agent_search``),
and states the load average before and after.

    python benchmarks/training_agent.py [--quick] [--time-budget 1020] [--window 600]
        [--out runs/bench_training_agent] [--throughput-only]

``--quick`` shrinks everything (a 150 s search of at most 9 epochs per trial, 100 s throughput
windows): a smoke run on a busy machine, not the measurement. ``--throughput-only`` re-measures
part 3 into the saved result (the search and its replay are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
NAME = "training_agent_search"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _tfopt(*args, log_path: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.time()
    with open(log_path, "w") as log:
        code = subprocess.call(
            [sys.executable, "-m", "tfopt", *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    if code:
        tail = log_path.read_text()[-2000:]
        raise SystemExit(f"`tfopt {' '.join(args)}` failed ({code}):\n{tail}")
    return time.time() - started


def search(
    out: Path, *, time_budget: float, max_epochs: int, workers: int, config: tuple = ()
) -> dict:
    """``tfopt tune [config...]``: ``config`` is the config name and key=value overrides."""
    d = out / "search"
    wall = _tfopt(
        "tune",
        *config,
        "--workers",
        str(workers),
        "--time-budget",
        str(time_budget),
        "--max-epochs",
        str(max_epochs),
        "--out",
        str(d),
        "--overwrite",
        log_path=out / "search.log",
    )
    report = json.loads((d / "report.json").read_text())
    best = report["best"]
    return {
        "wall_s": round(wall, 1),
        "trials": len(report["trials"]),
        "best_trial": best["trial_id"],
        "best_val": best["val_accuracy"],
        "best_test": best["test_accuracy"],
        "best_epochs": best["epochs_trained"],
        "best_values": {k: v for k, v in best["values"].items() if not k.startswith("tuner/")},
        "config": str(d / "best.yaml"),
        "importance": report["importance"],
        "report": str(d / "report.md"),
    }


def replay(out: Path, config: str) -> dict:
    d = out / "replay"
    shutil.rmtree(d, ignore_errors=True)
    wall = _tfopt("run", config, "--out", str(d), log_path=out / "replay.log")
    report = json.loads((d / "report.json").read_text())
    row = next(r for r in report["results"] if r["stage"] == "baseline" and r["format"] == "keras")
    delta = replay_delta(Path(config).parent / "best.keras", d / "baseline.keras", config)
    return {"wall_s": round(wall, 1), "test": row["accuracy"], "paired_delta": delta}


def replay_delta(best_keras: Path, replay_keras: Path, config: str) -> dict:
    """The replay vs the search's best model on the same test samples (tfopt._stats.paired_delta:
    95% paired bootstrap interval, McNemar's p), both on the split of ``config``."""
    import tfopt
    from tfopt._stats import correct, paired_delta

    cfg = tfopt.config.load(config)
    data = tfopt.data.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    best, again = (
        correct(tfopt.bench.runner_for(p).predict(data.x_test), data.y_test)
        for p in (best_keras, replay_keras)
    )
    return paired_delta(best, again).to_dict()


def throughput(out: Path, *, workers: int, window: float, epochs: int) -> dict:
    d = out / f"throughput_{workers}"
    load_before = os.getloadavg()[0]
    wall = _tfopt(
        "tune",
        "--workers",
        str(workers),
        "--algorithm",
        "random",
        "--time-budget",
        str(window),
        "--max-trials",
        "200",
        "--out",
        str(d),
        "--overwrite",
        "--quiet",
        f"tune.space.epochs={epochs}",
        "tune.space.early_stopping=0",
        "tune.space.width=[32,64]",
        "tune.space.depth=3",
        log_path=out / f"throughput_{workers}.log",
    )
    trials = json.loads((d / "report.json").read_text())["trials"]
    span = max(t["finished_at"] for t in trials) - min(t["started_at"] for t in trials)
    return {
        "workers": workers,
        "trials": len(trials),
        "span_s": round(span, 1),
        "trials_per_hour": round(3600 * len(trials) / span, 1),
        "wall_s": round(wall, 1),
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _load_span(t: dict) -> str:
    return f"; load {t['load'][0]:.1f} -> {t['load'][1]:.1f}" if "load" in t else ""


def _replay_delta(p: dict, s: dict) -> str:
    """The replay's delta, with its paired 95% interval when it was measured."""
    if "paired_delta" not in p:
        return f"{100 * (p['test'] - s['best_test']):+.2f} pt"
    from tfopt._stats import PairedDelta

    return f"{PairedDelta(**p['paired_delta']).as_points()}, paired 95% interval"


def save_results(name: str, r: dict, text: str) -> None:
    """Writes benchmarks/results/NAME.json (``r``) and NAME.md (``text``) and prints the table."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(r, indent=2))
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


def markdown(r: dict) -> str:
    s, p, t1, t2 = r["search"], r["replay"], r["throughput"][0], r["throughput"][1]
    speedup = t2["trials_per_hour"] / t1["trials_per_hour"]
    mode = "quick smoke run (not the measurement)" if r["quick"] else "full run"
    lines = [
        f"`tfopt tune` on MNIST-1D from the zoo `mnist1d_cnn` builder ({mode}; "
        f"load average {r['load_before']} before, {r['load_after']} after, 2 cores).",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| best trial's test accuracy ({s['trials']} trials, 2 workers, {s['wall_s']:.0f} s) | "
        f"{s['best_test']:.4f} (val {s['best_val']:.4f}) | >= 0.94 within 20 min |",
        f"| `tfopt run best.yaml` retrained from scratch | {p['test']:.4f} ({_replay_delta(p, s)}) "
        "| within 1 pt |",
        f"| search throughput, 1 worker | {t1['trials_per_hour']:.0f} trials/h "
        f"({t1['trials']} in {t1['span_s']:.0f} s{_load_span(t1)}) | |",
        f"| search throughput, 2 workers | {t2['trials_per_hour']:.0f} trials/h "
        f"({t2['trials']} in {t2['span_s']:.0f} s{_load_span(t2)}): {speedup:.2f}x | >= 1.7x |",
        "",
        f"Best trial ({s['best_epochs']} epochs): "
        + ", ".join(f"{k}={v}" for k, v in s["best_values"].items() if k != "epochs")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--time-budget", type=float, default=None)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--window", type=float, default=None, help="seconds of each throughput search")
    ap.add_argument("--out", default="runs/bench_training_agent")
    ap.add_argument(
        "--throughput-only", action="store_true", help="measure part 3, keep the saved search"
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.time_budget or (150.0 if args.quick else 1020.0)
    max_epochs = args.max_epochs or (9 if args.quick else 40)
    window = args.window or (100.0 if args.quick else 600.0)
    if args.throughput_only:
        r = json.loads((RESULTS / f"{NAME}.json").read_text())
    else:
        r = {"quick": args.quick, "load_before": _load(), "time_budget": budget}
        r["search"] = search(out, time_budget=budget, max_epochs=max_epochs, workers=2)
        print(f"search: {r['search']}", flush=True)
        r["replay"] = replay(out, r["search"]["config"])
        print(f"replay: {r['replay']}", flush=True)
    r["throughput"] = [
        throughput(out, workers=w, window=window, epochs=2 if args.quick else 5) for w in (1, 2)
    ]
    print(f"throughput: {r['throughput']}", flush=True)
    if not args.throughput_only:
        r["load_after"] = _load()
    save_results(NAME, r, markdown(r))


if __name__ == "__main__":
    main()
