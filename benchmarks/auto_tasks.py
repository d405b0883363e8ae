"""`tfopt auto` with the same defaults on several tasks: is it tuned to one benchmark?

For each task, runs ``tfopt auto --max-accuracy-drop D --time-budget S`` (its float baseline
trained by the default config's ``train:`` section) in a subprocess, then two small searches on the
same trained baseline (``--max-trials 1`` and ``--max-trials 2`` at a 2-point budget: do they
return a deployable model?). Prints and writes a Markdown table: the gzip-to-gzip ratio (float32
TFLite gzip bytes / best artifact gzip bytes), the test delta with its paired 95% interval, TFLite
Micro's arena (RAM) and the flash bytes, the wall time and the peak RSS of each run.

Tasks (``--tasks``, comma-separated, in this order by default):

* ``mnist1d``: MNIST-1D / ``mnist1d_cnn`` (the default config);
* ``fashion``: Fashion-MNIST / ``fashion_cnn``, searching the trained 0.9313 baseline that
  ``benchmarks/fashion_run.py`` caches (``--epochs 0``; trained first if the cache is empty);
* ``fashion_tflm``: the same under ``--target tflm --max-ram 64KB --max-flash 256KB`` at 1 pt;
* ``digits32``: digits32 / Keras's MobileNetV2 (alpha 0.35, 32x32 inputs, no pretrained weights);
* ``digits_gru``: scikit-learn digits read row by row (8 steps of 8 pixels) by a GRU: a recurrent
  model, whose int8 calibration TFLite runs in a child process.

A task whose dataset or model is not available here (e.g. ``fashion_cnn`` not in the zoo, or
Fashion-MNIST not cached) is skipped with a line that says why.

    python benchmarks/auto_tasks.py --tasks mnist1d --seeds 3 [--time-budget 780] [--skip-small]
    python benchmarks/auto_tasks.py --tasks fashion --time-budget 2700 --stem auto_fashion

Writes benchmarks/results/STEM.json and .md (after every search).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}

# task -> (config, dataset, zoo model / builder / cached baseline, baseline epochs, extra args)
TASKS = {
    "mnist1d": ("default", "mnist1d", "mnist1d_cnn", 30, []),
    # the trained 0.9313 baseline of benchmarks/fashion_run.py (same config, same split): a
    # search "on a trained baseline", as the target says
    "fashion": ("fashion", "fashion_mnist", "fashion_cached", 0, []),
    "fashion_tflm": ("fashion", "fashion_mnist", "fashion_cached", 0,
                     ["--target", "tflm", "--max-ram", "64KB", "--max-flash", "256KB"]),
    "digits32": ("default", "digits32", "keras_mobilenet_v2_035", 30, []),
    # a recurrent model: each 8x8 digit read row by row as a sequence of 8 steps (a GRU)
    "digits_gru": ("default", "digits", "digits_gru", 40, []),
}  # fmt: skip
# targets from issue 22 (2 cores)
TARGETS = {
    "mnist1d": ">= 40x gzip-to-gzip at <= 0.5 pt test drop, <= 15 min (median of 3 seeds)",
    "fashion": ">= 20x gzip-to-gzip, test interval inside -1 pt, point within 0.5 pt, <= 60 min",
    "fashion_tflm": "--max-ram 64KB --max-flash 256KB within 1 pt",
}
# the drop each task's main run may lose (the --max-accuracy-drop flag overrides the default)
TASK_DROP = {"fashion": "0.005", "fashion_tflm": "0.01"}


def _keras_mobilenet_v2(path: Path, input_shape, num_classes) -> Path:
    """Keras's MobileNetV2 (alpha 0.35, random init, logits out) saved where `--model` reads it."""
    import keras

    model = keras.applications.MobileNetV2(
        input_shape=tuple(input_shape), alpha=0.35, weights=None, classes=num_classes,
        classifier_activation=None,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def _digits_gru(path: Path, input_shape, num_classes) -> Path:
    """A GRU over the rows of an 8x8 digit (8 steps of 8 pixels), softmax out."""
    import keras

    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Reshape((input_shape[0], -1))(inputs)
    x = keras.layers.GRU(32)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs, name="digits_gru").save(path)
    return path


BUILDERS = {"keras_mobilenet_v2_035": _keras_mobilenet_v2, "digits_gru": _digits_gru}


def availability(task: str, out: Path) -> tuple[str | None, str | None]:
    """``(model argument, None)`` when the task can run here, else ``(None, why not)``."""
    import tfopt

    _, data_name, model_name, _, _ = TASKS[task]
    try:
        data = tfopt.data.load(data_name)
    except Exception as e:  # offline, not cached, not installed
        return None, f"dataset {data_name!r} is not available ({type(e).__name__}: {e})"
    if model_name == "fashion_cached":
        sys.path.insert(0, str(HERE))
        from _fashion import baseline, cached_path

        path = cached_path()
        if not path.exists():
            print(
                "[auto_tasks] training the Fashion-MNIST baseline (cached for reruns)", flush=True
            )
            baseline()
        return str(path), None
    if model_name in BUILDERS:
        path = out / "models" / f"{model_name}.keras"
        if not path.exists():
            BUILDERS[model_name](path, data.input_shape, data.num_classes)
        return str(path), None
    if model_name not in tfopt.models.MODELS:
        return None, f"model {model_name!r} is not in tfopt's zoo on this branch"
    return model_name, None


def seeded_config(config: str, seed: int, out: Path) -> str:
    """The packaged ``config`` with ``seed: seed`` (the baseline's initial weights, its data split
    and the search's sampling), written under ``out``; ``config`` itself for seed 0."""
    if seed == 0:
        return config
    import tfopt

    text = (Path(tfopt.__file__).parent / "configs" / f"{config}.yaml").read_text()
    path = out / "configs" / f"{config}_seed{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("\nseed: 0\n", f"\nseed: {seed}\n"))
    return str(path)


def run(args: list[str]) -> dict:
    """Runs ``tfopt auto ARGS``; its exit code, wall time, peak RSS and report."""
    cmd = [sys.executable, "-m", "tfopt", "auto", *args]
    print("$ tfopt auto " + " ".join(args), flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, cwd=str(HERE.parent))  # fmt: skip
    last = ""
    for line in proc.stdout:
        if line.startswith(("[auto]", "tfopt")):
            print("   " + line, end="", flush=True)
            last = line.strip()
    _, status, usage = os.wait4(proc.pid, 0)
    out = Path(args[args.index("--out") + 1])
    report = out / "report.json"
    return {
        "command": "tfopt auto " + " ".join(args),
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "last_line": last,
        "report": json.loads(report.read_text()) if report.exists() else None,
    }


def _interval(d: dict | None) -> str:
    if not d:
        return "-"
    return f"{100 * d['delta']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def summarize(task: str, main: dict, small: dict[int, dict]) -> dict:
    rep = main["report"] or {}
    best = rep.get("best")

    def deployable(r):
        return bool(r["report"] and r["report"].get("best") and r["exit_code"] == 0)

    return {
        "task": task,
        "ratio": None if not best else round(best["ratio"], 1),
        "test_delta": None if not best else best.get("test_delta"),
        "arena_bytes": None if not best else best.get("arena_bytes"),
        "flash_bytes": None if not best else best.get("flash_bytes"),
        "best": None if not best else " + ".join(best["stages"]),
        "wall_s": main["wall_s"],
        "peak_rss_mb": main["peak_rss_mb"],
        "exit_code": main["exit_code"],
        "resolution": rep.get("resolution"),
        "max_trials": {
            n: {
                "deployable": deployable(r),
                "wall_s": r["wall_s"],
                "peak_rss_mb": r["peak_rss_mb"],
                "best": ((r["report"] or {}).get("best") or {}).get("stages"),
            }
            for n, r in small.items()
        },
        "target": TARGETS.get(task, "-"),
        "commands": [main["command"], *(r["command"] for r in small.values())],
    }


def _no_best(r: dict) -> str:
    if r["commands"][0] == "-":
        return "(only the 1- and 2-trial runs)"
    return f"none (exit {r['exit_code']})"


def table(rows: list[dict], skipped: dict[str, str]) -> str:
    lines = [
        "| task | seed | best recipe | gzip-to-gzip | test delta (pt) [95%] | TFLM arena | flash | wall "
        "| peak RSS | --max-trials 1 / 2 deployable | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mt = " / ".join("yes" if v["deployable"] else "no" for v in r["max_trials"].values())
        lines.append(
            f"| {r['task']} | {r.get('seed', 0)} | {r['best'] or _no_best(r)} | "
            f"{'-' if r['ratio'] is None else str(r['ratio']) + 'x'} | "
            f"{_interval(r['test_delta'])} | {r['arena_bytes'] or '-'} | {r['flash_bytes'] or '-'} "
            f"| {r['wall_s'] / 60:.1f} min | {r['peak_rss_mb']:.0f} MB | {mt} | {r['target']} |"
        )
    lines += [f"\nskipped {task}: {why}" for task, why in skipped.items()]
    return "\n".join(lines)


def _median_line(task: str, rows: list[dict]) -> str | None:
    ratios = sorted(r["ratio"] or 0.0 for r in rows if r["task"] == task)
    if len(ratios) < 2:
        return None
    return (f"{task}: median {statistics.median(ratios):.1f}x over {len(ratios)} seeds "
            f"(min {ratios[0]:.1f}x, max {ratios[-1]:.1f}x)")  # fmt: skip


def run_task(task: str, model: str, seed: int, args, out: Path) -> dict:
    """The main search of ``task`` at ``seed``, then (seed 0) the 1- and 2-trial searches on the
    same trained baseline at a 2-point budget: do they return a deployable model?"""
    config, data, _, epochs, extra = TASKS[task]
    drop = args.max_accuracy_drop or TASK_DROP.get(task, "0.005")
    run_dir = out / (task if seed == 0 else f"{task}_seed{seed}")
    if args.small_only:  # the 1- and 2-trial searches on the main run's (or the cached) baseline
        main_run = {"command": "-", "report": None, "wall_s": 0.0, "peak_rss_mb": 0.0,
                    "exit_code": None}  # fmt: skip
        if not (run_dir / "baseline.keras").exists():
            if not Path(model).is_file():  # a zoo name: there is no trained baseline to reuse
                raise SystemExit(f"--small-only needs a trained baseline: {run_dir}/baseline.keras"
                                 f" from an earlier run of {task}; run it without --small-only")  # fmt: skip
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(model, run_dir / "baseline.keras")
    else:
        main_run = run([seeded_config(config, seed, out), "--data", data, "--model", model,
                        "--epochs", str(epochs), "--max-accuracy-drop", drop, "--time-budget",
                        str(args.time_budget), *extra, "--out", str(run_dir), "--overwrite"])  # fmt: skip
    small = {}
    if seed == 0 and not args.skip_small:
        baseline = run_dir / "baseline.keras"  # the same trained baseline for the small runs
        for n in (1, 2):
            small[n] = run([config, "--data", data, "--model", str(baseline), "--epochs", "0",
                            "--max-accuracy-drop", "0.02", "--max-trials", str(n), *extra,
                            "--out", str(out / f"{task}_trials{n}"), "--overwrite"])  # fmt: skip
    row = summarize(task, main_run, small)
    row["seed"] = seed
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated: {list(TASKS)}")
    ap.add_argument("--max-accuracy-drop", default=None,
                    help="default: 0.005, and 0.01 for fashion_tflm")  # fmt: skip
    ap.add_argument("--time-budget", type=float, default=780.0, help="search seconds per task")
    ap.add_argument("--seeds", type=int, default=1, help="searches per task (seed 0, 1, ...)")
    ap.add_argument("--skip-small", action="store_true", help="no --max-trials 1 / 2 runs")
    ap.add_argument("--small-only", action="store_true", help="only the --max-trials 1 / 2 runs")
    ap.add_argument("--out", default=str(HERE.parent / "runs" / "bench_auto_tasks"))
    ap.add_argument("--stem", default="auto_tasks", help="results file name")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows, skipped = [], {}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        if task not in TASKS:
            ap.error(f"unknown task {task!r}; known: {list(TASKS)}")
        model, why = availability(task, out)
        if model is None:
            print(f"[auto_tasks] skipping {task}: {why}", flush=True)
            skipped[task] = why
            continue
        for seed in range(args.seeds):
            rows.append(run_task(task, model, seed, args, out))
            write(rows, skipped, args.stem, argv)  # after every search: a stop loses nothing
    md = write(rows, skipped, args.stem, argv)
    print("\n" + md)
    return 0


def write(rows: list[dict], skipped: dict, stem: str, argv) -> str:
    md = table(rows, skipped)
    medians = [
        m for m in (_median_line(t, rows) for t in dict.fromkeys(r["task"] for r in rows)) if m
    ]
    md += "".join(f"\n\n{m}" for m in medians)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"rows": rows, "skipped": skipped},
                                                     indent=2, default=str))  # fmt: skip
    load = os.getloadavg()[0]
    (RESULTS / f"{stem}.md").write_text(
        "# tfopt auto on several tasks, same defaults\n\n`python benchmarks/auto_tasks.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + f"` ({os.cpu_count()} cores, load {load:.1f} at the end)\n\n"
        + md
        + "\n"
    )
    return md


if __name__ == "__main__":
    sys.exit(main())
