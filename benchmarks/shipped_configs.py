"""Every shipped config (tfopt/configs/*.yaml, copied in configs/) run end to end: its accuracy drop.

The drop is the float baseline's test accuracy (Keras) minus the test accuracy of the config's
deployable artifact (the smallest file exported from the last stage, e.g. its int8 TFLite),
measured through its runtime, in points.
Each config states this number in its header comment ("expected accuracy drop: X pt"), and
tests/test_config.py checks that the comment matches benchmarks/results/shipped_configs.json.

Usage: python benchmarks/shipped_configs.py [NAME ...] [--out DIR]
Writes DIR/shipped_configs.{json,md} (default benchmarks/results), adding to the rows it holds.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import tfopt
from tfopt._pipeline import run
from tfopt._stats import PairedDelta, correct, paired_delta
from tfopt.cli import show_progress


def paired(cfg, baseline_path, artifact_path):
    """The artifact vs the baseline on the same test samples (paired 95% interval)."""
    data = tfopt.data.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    base, final = (
        correct(tfopt.bench.runner_for(p).predict(data.x_test), data.y_test)
        for p in (baseline_path, artifact_path)
    )
    return paired_delta(base, final)


def interval(r) -> str:
    return PairedDelta(**r["paired_delta"]).as_points() if "paired_delta" in r else "not measured"


root = Path(__file__).resolve().parent.parent
configs = sorted((root / "tfopt" / "configs").glob("*.yaml"))
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("names", nargs="*", metavar="NAME", help="configs to run (default: all)")
ap.add_argument("--out", type=Path, default=root / "benchmarks" / "results")
args = ap.parse_args()
unknown = set(args.names) - {p.stem for p in configs}
if unknown:
    ap.error(f"unknown config(s) {sorted(unknown)}; shipped: {[p.stem for p in configs]}")
out = args.out
out.mkdir(parents=True, exist_ok=True)
names = args.names or [p.stem for p in configs]
path_json = out / "shipped_configs.json"
results = json.loads(path_json.read_text()) if path_json.exists() else {}
load_start = os.getloadavg()[0]
show_progress()  # the runs' progress lines, as `tfopt run` shows them
for path in configs:
    if path.stem not in names:
        continue
    # the load test does not change accuracy: off, to keep the run short
    cfg = tfopt.config.load(path, overrides=["bench.concurrency=[]", "bench.runs=20"])
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        report = run(cfg, out_dir=Path(tmp) / path.stem, verbose=0)
        rows = report["results"]
        base = next(r for r in rows if (r["stage"], r["format"]) == ("baseline", "keras"))
        final_stage = rows[-1]["stage"]
        exported = [r for r in rows if r["stage"] == final_stage and r["format"] != "keras"]
        final = min(exported, key=lambda r: r["gzip_bytes"])
        delta = paired(cfg, base["path"], final["path"])
    results[path.stem] = {
        "baseline_accuracy": base["accuracy"],
        "final_artifact": f"{final['stage']}:{final['format']}",
        "final_accuracy": final["accuracy"],
        "drop_points": round(100 * (base["accuracy"] - final["accuracy"]), 1),
        "paired_delta": delta.to_dict(),
        "gzip_bytes": final["gzip_bytes"],
        "seconds": round(time.time() - started),
        "artifacts": {f"{r['stage']}:{r['format']}": r["accuracy"] for r in rows},
    }
    print(path.stem, results[path.stem], flush=True)
path_json.write_text(json.dumps(results, indent=2) + "\n")
lines = [
    f"Shipped configs, run end to end on {os.cpu_count()} CPU cores (load average "
    f"{load_start:.1f} at the start; the load test is off). Drop = baseline Keras test accuracy "
    "minus the test accuracy of the smallest artifact of the last stage, in points; the "
    "artifact - baseline column is the same difference paired on the same test samples "
    "(tfopt._stats.paired_delta, 95% bootstrap interval).",
    "",
    "| config | baseline (Keras) | final artifact | its accuracy | drop (pt) "
    "| artifact - baseline [95% CI] | gzip size |",
    "|---|---|---|---|---|---|---|",
]
for name, r in sorted(results.items()):
    lines.append(
        f"| {name}.yaml | {r['baseline_accuracy']:.4f} | {r['final_artifact']} | "
        f"{r['final_accuracy']:.4f} | {r['drop_points']:.1f} | {interval(r)} "
        f"| {r['gzip_bytes'] / 1024:.1f} KiB |"
    )
(out / "shipped_configs.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
