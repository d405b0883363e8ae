"""Edge: MNIST-1D models on a microcontroller runtime (TensorFlow Lite for Microcontrollers).

Sections (each writes its own results file, so other edge sections can be added beside them):

* ``micro`` -> results/edge_micro.{md,json}: the default `tfopt run` (MNIST-1D, mnist1d_cnn),
  exported as tflite-int8 and as tflm (the int8 model with a fixed batch of 1, plus
  model_data.cc/.h), run in LiteRT and in TFLite Micro on the 1000 test samples: accuracy through
  each runtime, TFLM's argmax agreement with LiteRT, TFLM's arena (its allocation recorder's
  total: peak RAM) and the flash the model takes (the raw flatbuffer).
* ``budget`` -> results/edge_budget.{md,json}: ``tfopt auto --target tflm --max-ram 4KB
  --max-flash 16KB --max-accuracy-drop 0.02``: a model that fits a 4 KB arena and 16 KB of
  flash within 2 points of the float model (selection on val; test reported).

    python benchmarks/edge.py [--quick] [--section micro|budget|all] [--time-budget S]

``--quick`` trains the baseline for 10 epochs instead of 30 and gives the search 6 minutes. The
load average of the (shared, 2-core) machine is recorded with every section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def _write(name: str, title: str, md: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(f"# {title}\n\n{md}\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(md, flush=True)


def micro(quick: bool) -> dict:
    """The default run's int8 model in LiteRT and in TFLite Micro."""
    import tfopt
    from tfopt._pipeline import run

    epochs = 10 if quick else 30
    overrides = [f"train.epochs={epochs}", "export.formats=[tflite,tflite-int8,tflm]"]
    load = _load()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = run(tfopt.config.load(overrides=overrides), out_dir=Path(tmp) / "edge", verbose=0)
        rows = {r["format"]: r for r in report["results"] if r["stage"] == "baseline"}
        cc = Path(tmp) / "edge" / "baseline_tflm_model_data.cc"  # named after the .tflite
        c_bytes = len(tfopt.export.parse_c_array(cc.read_text())[1])
    wall = time.perf_counter() - started
    lines = [
        f"`tfopt run` default config, baseline trained {epochs} epochs; {report['dataset']}; "
        f"wall time {wall:.0f} s on 2 shared cores (load average {load}).",
        "",
        "| artifact | runtime | test accuracy | flash (flatbuffer) | TFLM arena (peak RAM) | "
        "TFLM vs LiteRT argmax (test) | distinct ops |",
        "|---|---|---|---|---|---|---|",
    ]
    facts = {}
    for fmt, runtime in (("tflite", "LiteRT"), ("tflite-int8", "LiteRT"), ("tflm", "TFLite Micro")):
        r = rows[fmt]
        m = r.get("micro") or {}
        agree = m.get("tflm_agreement")
        lines.append(
            f"| {fmt} | {runtime} | {r['accuracy']:.4f} | {r['bytes']:,} B | "
            + ("-" if r.get("arena_bytes") is None else f"{r['arena_bytes']:,} B")
            + " | "
            + ("-" if agree is None else f"{agree:.1%}")
            + f" | {len(m['ops']) if m.get('ops') else '-'} |"
        )
        facts[fmt] = {
            "accuracy": r["accuracy"],
            "flash_bytes": r["bytes"],
            "arena_bytes": r.get("arena_bytes"),
            "arena": m.get("arena"),
            "tflm_agreement": agree,
            "ops": m.get("ops"),
        }
    check = rows["tflm"]["check"] or {}
    lines += [
        "",
        f"tflm export: model_data.cc holds {c_bytes:,} bytes, byte-identical to the .tflite "
        f"({check.get('c_source_identical')}), and runs identically in TFLM "
        f"({check.get('c_source_runs_identically')}); TFLM vs Keras argmax on the check data "
        f"{check.get('argmax_agreement', 0):.1%}. The tflm artifact has a fixed batch of 1 "
        "(TFLM runs one sample at a time), which removes the SHAPE/STRIDED_SLICE/PACK ops of a "
        "dynamic-batch Flatten. The float32 model is not run in TFLM here (tfopt measures int8 "
        "models in TFLM). Flash is the flatbuffer only: the TFLM library and kernels depend on "
        "the MCU toolchain and are not counted.",
    ]
    data = {"epochs": epochs, "wall_s": round(wall, 1), "load_avg": load, "artifacts": facts}
    _write(
        "edge_micro", "MNIST-1D CNN on TensorFlow Lite for Microcontrollers", "\n".join(lines), data
    )
    return data


def budget(quick: bool, time_budget: float | None, out: Path) -> dict:
    """``tfopt auto --target tflm --max-ram 4KB --max-flash 16KB --max-accuracy-drop 0.02``."""
    seconds = time_budget or (360.0 if quick else 900.0)
    epochs = 10 if quick else 30
    cmd = [sys.executable, "-m", "tfopt", "auto", "--max-accuracy-drop", "0.02", "--target",
           "tflm", "--max-ram", "4KB", "--max-flash", "16KB", "--time-budget", str(seconds),
           "--epochs", str(epochs), "--out", str(out), "--overwrite"]  # fmt: skip
    command = "tfopt " + " ".join(cmd[3:])
    print(f"$ {command}", flush=True)
    load = _load()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=HERE.parent
    )
    for line in proc.stdout:
        if line.startswith(("[auto]", "tfopt")):
            print(line, end="", flush=True)
    code = proc.wait()
    wall = time.perf_counter() - started
    report = json.loads((out / "report.json").read_text())
    base, best = report["baseline"], report.get("best")
    from auto_mnist1d import paired_deltas  # the best artifact vs the float one, sample by sample

    paired = paired_deltas(report) if best else {}

    def row(label, c, ref):
        agree = c.get("tflm_agreement")
        return (
            f"| {label} | {c['bytes']:,} B | "
            + ("-" if c.get("arena_bytes") is None else f"{c['arena_bytes']:,} B")
            + f" | {c['val_accuracy']:.4f} ({100 * (c['val_accuracy'] - ref['val_accuracy']):+.2f}) "
            f"| {c['test_accuracy']:.4f} ({100 * (c['test_accuracy'] - ref['test_accuracy']):+.2f}) "
            "| " + ("-" if agree is None else f"{agree:.1%}") + " |"
        )

    lines = [
        f"`{command}` (baseline {epochs} epochs); wall time {wall / 60:.1f} min on 2 shared cores "
        f"(load average at the start {load}); exit code {code}.",
        "",
        "| artifact | flash (flatbuffer) | TFLM arena (peak RAM) | val acc (pt) | test acc (pt) | "
        "TFLM vs LiteRT argmax (val) |",
        "|---|---|---|---|---|---|",
        row("float baseline (TFLite float32)", base, base),
    ]
    fits = bool(
        best
        and best["arena_bytes"] is not None
        and best["arena_bytes"] <= 4096
        and best["bytes"] <= 16384
        and base["val_accuracy"] - best["val_accuracy"] <= 0.02 + 1e-12
    )
    if best:
        lines.append(
            row(f"best: trial {best['trial_id']} ({' + '.join(best['stages'])})", best, base)
        )
    rejected = [c for c in report["candidates"] if c.get("rejected")]
    lines += [
        "",
        f"Trials: {report['trials_completed']} completed, {report['trials_failed']} failed, "
        f"{len(rejected)} rejected over the RAM/flash budgets; stopped: {report['stopped']}. "
        f"Fits 4 KB arena + 16 KB flash within 2 pt (val): {'yes' if fits else 'no'}"
        + ("" if not best else f"; test {test_delta(best, base, paired)} (never used to select)")
        + ". Accuracy of the candidates is measured through TFLite Micro (the tflm target); the "
        "arena is TFLM's allocation recorder's total, flash the raw flatbuffer.",
    ]
    if not best:
        lines.append("\n**No candidate fitted the budgets within 2 points.**")
    data = {
        "command": command,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "load_avg": load,
        "fits": fits,
        "baseline": base,
        "best": best,
        "paired_deltas": paired,
        "rejected": [{"trial_id": c["trial_id"], "rejected": c["rejected"]} for c in rejected],
        "front": report["front"],
    }
    _write(
        "edge_budget", "tfopt auto under a 4 KB RAM / 16 KB flash budget", "\n".join(lines), data
    )
    return data


def test_delta(best, base, paired) -> str:
    """The test delta, with its paired 95% interval (tfopt._stats, through LiteRT) when measured."""
    if "test" not in paired:
        return f"{100 * (best['test_accuracy'] - base['test_accuracy']):+.2f} pt"
    from tfopt._stats import PairedDelta

    return f"{PairedDelta(**paired['test']).as_points()} (paired 95% interval, LiteRT)"


def main(argv=None) -> int:
    from tfopt.cli import show_progress

    show_progress()  # the runs' progress lines, as `tfopt run` shows them
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10-epoch baseline, 6-minute search")
    ap.add_argument("--section", choices=["micro", "budget", "all"], default="all")
    ap.add_argument("--time-budget", type=float, help="search seconds for the budget section")
    ap.add_argument(
        "--out",
        default=str(HERE.parent / "runs" / "bench_edge_budget"),
        help="the budget section's run directory (git-ignored)",
    )
    args = ap.parse_args(argv)
    if args.section in ("micro", "all"):
        micro(args.quick)
    if args.section in ("budget", "all"):
        budget(args.quick, args.time_budget, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
