"""`tfopt auto` with the same defaults on several tasks: is it tuned to one benchmark?

For each task, runs ``tfopt auto --max-accuracy-drop D --time-budget S`` (its float baseline
trained by the default config's ``train:`` section) in a subprocess, then two small searches on the
same trained baseline (``--max-trials 1`` and ``--max-trials 2`` at a 2-point budget: do they
return a deployable model?). Prints and writes a Markdown table: the gzip-to-gzip ratio (float32
TFLite gzip bytes / best artifact gzip bytes), the test delta with its paired 95% interval, TFLite
Micro's arena (RAM) and the flash bytes, the wall time and the peak RSS of each run.

Tasks (``--tasks``, comma-separated, in this order by default):

* ``mnist1d``: MNIST-1D / ``mnist1d_cnn`` (the default config);
* ``fashion``: Fashion-MNIST / ``fashion_cnn``;
* ``digits32``: digits32 / Keras's MobileNetV2 (alpha 0.35, 32x32 inputs, no pretrained weights);
* ``digits``: scikit-learn digits (8x8) / ``digits_cnn``, a small image task of a different shape.

A task whose dataset or model is not available here (e.g. ``fashion_cnn`` not in the zoo, or
Fashion-MNIST not cached) is skipped with a line that says why.

    python benchmarks/auto_tasks.py --tasks mnist1d [--time-budget 780] [--out runs/bench_auto_tasks]

Writes benchmarks/results/auto_tasks.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}

# task -> (dataset, zoo model or a builder below, baseline epochs)
TASKS = {
    "mnist1d": ("mnist1d", "mnist1d_cnn", 30),
    "fashion": ("fashion_mnist", "fashion_cnn", 15),
    "digits32": ("digits32", "keras_mobilenet_v2_035", 30),
    "digits": ("digits", "digits_cnn", 30),
}
# targets from issue 22 (2 cores)
TARGETS = {
    "mnist1d": ">= 40x gzip-to-gzip at <= 0.5 pt test drop, <= 15 min",
    "fashion": ">= 20x gzip-to-gzip, test interval inside -1 pt, point within 0.5 pt, <= 60 min",
}


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


def availability(task: str, out: Path) -> tuple[str | None, str | None]:
    """``(model argument, None)`` when the task can run here, else ``(None, why not)``."""
    import tfopt

    data_name, model_name, _ = TASKS[task]
    try:
        data = tfopt.data.load(data_name)
    except Exception as e:  # offline, not cached, not installed
        return None, f"dataset {data_name!r} is not available ({type(e).__name__}: {e})"
    if model_name == "keras_mobilenet_v2_035":
        path = out / "models" / "mobilenet_v2_035.keras"
        if not path.exists():
            _keras_mobilenet_v2(path, data.input_shape, data.num_classes)
        return str(path), None
    if model_name not in tfopt.models.MODELS:
        return None, f"model {model_name!r} is not in tfopt's zoo on this branch"
    return model_name, None


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
                "best": ((r["report"] or {}).get("best") or {}).get("stages"),
            }
            for n, r in small.items()
        },
        "target": TARGETS.get(task, "-"),
        "commands": [main["command"], *(r["command"] for r in small.values())],
    }


def table(rows: list[dict], skipped: dict[str, str]) -> str:
    lines = [
        "| task | best recipe | gzip-to-gzip | test delta (pt) [95%] | TFLM arena | flash | wall "
        "| peak RSS | --max-trials 1 / 2 deployable | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mt = " / ".join("yes" if v["deployable"] else "no" for v in r["max_trials"].values())
        lines.append(
            f"| {r['task']} | {r['best'] or 'none (exit ' + str(r['exit_code']) + ')'} | "
            f"{'-' if r['ratio'] is None else str(r['ratio']) + 'x'} | "
            f"{_interval(r['test_delta'])} | {r['arena_bytes'] or '-'} | {r['flash_bytes'] or '-'} "
            f"| {r['wall_s'] / 60:.1f} min | {r['peak_rss_mb']:.0f} MB | {mt} | {r['target']} |"
        )
    lines += [f"\nskipped {task}: {why}" for task, why in skipped.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated: {list(TASKS)}")
    ap.add_argument("--max-accuracy-drop", default="0.005")
    ap.add_argument("--time-budget", type=float, default=780.0, help="search seconds per task")
    ap.add_argument("--out", default=str(HERE.parent / "runs" / "bench_auto_tasks"))
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
        data, _, epochs = TASKS[task]
        common = ["--data", data, "--model", model]
        main_run = run([*common, "--epochs", str(epochs), "--max-accuracy-drop",
                        args.max_accuracy_drop, "--time-budget", str(args.time_budget),
                        "--out", str(out / task), "--overwrite"])  # fmt: skip
        baseline = out / task / "baseline.keras"  # the same trained baseline for the small runs
        small = {
            n: run(
                [
                    "--data",
                    data,
                    "--model",
                    str(baseline),
                    "--epochs",
                    "0",
                    "--max-accuracy-drop",
                    "0.02",
                    "--max-trials",
                    str(n),
                    "--out",
                    str(out / f"{task}_trials{n}"),
                    "--overwrite",
                ]
            )
            for n in (1, 2)
        }
        rows.append(summarize(task, main_run, small))
    md = table(rows, skipped)
    print("\n" + md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "auto_tasks.json").write_text(json.dumps({"rows": rows, "skipped": skipped},
                                                        indent=2, default=str))  # fmt: skip
    (RESULTS / "auto_tasks.md").write_text(
        "# tfopt auto on several tasks, same defaults\n\n`python benchmarks/auto_tasks.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`\n\n"
        + md
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
