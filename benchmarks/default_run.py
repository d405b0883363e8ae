"""The default `tfopt run` (configs/default.yaml): MNIST-1D, mnist1d_cnn, float and int8 TFLite.

Usage: python benchmarks/default_run.py [--out DIR]
Writes DIR/default_run.{json,md} (default benchmarks/results) and prints the table.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import tfopt
from tfopt._pipeline import run
from tfopt._report import markdown_table
from tfopt.cli import show_progress

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
out = ap.parse_args().out
out.mkdir(parents=True, exist_ok=True)
show_progress()  # the run's progress lines, as `tfopt run` shows them
with tempfile.TemporaryDirectory() as tmp:
    report = run(tfopt.config.load(), out_dir=Path(tmp) / "default", verbose=0)
table = markdown_table(report["results"])
header = (
    f"Default run (`tfopt run`), {report['dataset']}, wall time {report['seconds']:.0f} s "
    f"on {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f}).\n\n"
)
(out / "default_run.md").write_text(header + table + "\n")
(out / "default_run.json").write_text(json.dumps(report, indent=2, default=str))
print(header + table)
sys.exit(0)
