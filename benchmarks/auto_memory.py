"""Peak resident memory of `tfopt auto` with 2 and with 12 trials on the same trained baseline.

Issue 22's target: the 12-trial search's peak RSS within 300 MB of the 2-trial search's (TF 2.21's
``TFLiteConverter.convert()`` leaks about 22 MB a call, so tfopt converts in a recycled worker
process). Each search runs in its own process (``tfopt auto --epochs 0 --model BASELINE``); its
peak RSS is the kernel's ``ru_maxrss`` from ``wait4``, the largest of the search process and of
the children it waited for (the converter workers).

    python benchmarks/auto_memory.py [--trials 2,12] [--model runs/.../baseline.keras]

Without ``--model`` the default config's ``mnist1d_cnn`` is trained once (30 epochs) first.
Writes benchmarks/results/auto_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from auto_tasks import RESULTS, run  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", default="2,12")
    ap.add_argument("--model", default=None, help="a trained .keras baseline (default: train one)")
    ap.add_argument("--out", default=str(HERE.parent / "runs" / "bench_auto_memory"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    model = args.model
    if model is None:  # one short search trains and saves the default baseline
        first = run(["--max-trials", "1", "--max-accuracy-drop", "0.02",
                     "--out", str(out / "baseline"), "--overwrite"])  # fmt: skip
        model = str(out / "baseline" / "baseline.keras")
        if first["exit_code"] not in (0, 3):
            print(f"training the baseline failed: {first['last_line']}")
            return 1
    rows = []
    for n in [int(t) for t in args.trials.split(",")]:
        r = run(["--model", model, "--data", "mnist1d", "--epochs", "0", "--max-accuracy-drop",
                 "0.02", "--max-trials", str(n), "--out", str(out / f"trials{n}"), "--overwrite"])  # fmt: skip
        done = (r["report"] or {}).get("trials_completed")
        # the report's split: the search process and the converter's (recycled) worker
        split = (r["report"] or {}).get("resident_mb") or {}
        rows.append({"max_trials": n, "trials_completed": done, "peak_rss_mb": r["peak_rss_mb"],
                     "search_mb": split.get("search"), "worker_mb": split.get("converter_worker"),
                     "wall_s": r["wall_s"], "exit_code": r["exit_code"], "command": r["command"]})  # fmt: skip
    lines = [
        "| --max-trials | trials completed | peak RSS | of it: search process / converter worker "
        "| wall | exit |",
        "|---|---|---|---|---|---|",
    ]
    mb = lambda v: "-" if v is None else f"{v:.0f} MB"  # noqa: E731
    lines += [f"| {r['max_trials']} | {r['trials_completed']} | {r['peak_rss_mb']:.0f} MB | "
              f"{mb(r['search_mb'])} / {mb(r['worker_mb'])} | "
              f"{r['wall_s'] / 60:.1f} min | {r['exit_code']} |" for r in rows]  # fmt: skip
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    lines.append(f"\n{rows[-1]['max_trials']} trials vs {rows[0]['max_trials']}: {growth:+.0f} MB "
                 f"peak RSS (target: < +300 MB). Load average {os.getloadavg()[0]:.1f} at the end.")  # fmt: skip
    md = "\n".join(lines)
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "auto_memory.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "auto_memory.md").write_text(
        "# tfopt auto: peak RSS with 2 and 12 trials\n\n`python benchmarks/auto_memory.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`\n\n"
        + md
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
