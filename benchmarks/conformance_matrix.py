"""Prints the conformance matrix: technique x zoo model -> ok, or the stage that failed and why.

Runs the same pipeline as tests/test_conformance.py (wrap -> fit one step -> .keras save/load ->
strip -> export -> parity) on every cell and prints a Markdown table, then the detail of each
failure and each reported skip. Not a test: it records what today's code does.

    PYTHONPATH=. python benchmarks/conformance_matrix.py [--techniques prune,qat] [--models gru]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from tests._zoo import TECHNIQUES, ZOO, Outcome, run_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--techniques", default=",".join(TECHNIQUES))
    parser.add_argument("--models", default=",".join(ZOO))
    args = parser.parse_args()
    techniques = args.techniques.split(",")
    models = args.models.split(",")
    cells, details = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            for t in techniques:
                outcome = Outcome()
                start = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        run_pipeline(TECHNIQUES[t], ZOO[m], tmp, outcome)
                    cell = "ok"
                except Exception as e:  # noqa: BLE001 - recording every failure is the point
                    first = (str(e).strip().splitlines() or [""])[0][:160]
                    cell = f"{outcome.stage}: {type(e).__name__}"
                    details.append(f"- {t} x {m} at {outcome.stage}: {type(e).__name__}: {first}")
                seconds = time.perf_counter() - start
                if outcome.skipped:
                    skips = "; ".join(f"{k}: {v[:80]}" for k, v in outcome.skipped.items())
                    details.append(f"- {t} x {m} skipped: {skips}")
                details.append(f"- {t} x {m} seconds: {outcome.seconds}")
                if outcome.checks:
                    diffs = {
                        f: (c.get("max_abs_diff"), c.get("argmax_agreement"))
                        for f, c in outcome.checks.items()
                    }
                    details.append(f"- {t} x {m} checks: {diffs} {outcome.diffs}")
                cells[m, t] = f"{cell} ({seconds:.1f}s)"
                print(f"{m:>18} {t:>15}: {cells[m, t]}", file=sys.stderr, flush=True)
    print("| model | " + " | ".join(techniques) + " |")
    print("|---|" + "---|" * len(techniques))
    for m in models:
        print(f"| {m} | " + " | ".join(cells[m, t] for t in techniques) + " |")
    print()
    print("\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
