"""Writes a run's report: report.json, report.md (a table) and report.png (accuracy vs size)."""

from __future__ import annotations

import json
from pathlib import Path


def _fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| stage | format | accuracy | size | gzip size | latency p50 (ms) | latency p99 (ms) | parity with Keras |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        check = r.get("check")
        parity = (
            "-"
            if not check
            else f"{check['argmax_agreement']:.1%} argmax, max diff {check['max_abs_diff']:.2g}"
        )
        lat = r.get("latency_ms") or {}
        lines.append(
            f"| {r['stage']} | {r['format']} | {r['accuracy']:.4f} | {_fmt_bytes(r['bytes'])} | "
            f"{_fmt_bytes(r['gzip_bytes'])} | {lat.get('p50', float('nan')):.3f} | "
            f"{lat.get('p99', float('nan')):.3f} | {parity} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["format"] == "keras":
            continue
        ax.scatter(r["gzip_bytes"] / 1024, r["accuracy"], s=40)
        ax.annotate(
            f"{r['stage']}:{r['format']}",
            (r["gzip_bytes"] / 1024, r["accuracy"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xlabel("gzip size (KiB)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs size of the exported artifacts")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict, run_dir: Path) -> None:
    run_dir = Path(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    md = [
        f"# tfopt run `{report['name']}`",
        "",
        f"Dataset: {report['dataset']}. Wall time: {report['seconds']:.0f} s.",
        "",
        "Accuracy is measured on the test split through each artifact's own runtime (Keras, LiteRT).",
        "Latency: one sample per request, single thread, after warm-up.",
        "",
        markdown_table(report["results"]),
        "",
    ]
    if report.get("steps"):
        md += ["## Steps", ""]
        for stage, facts in report["steps"].items():
            md.append(f"- **{stage}**: " + ", ".join(f"{k}={v}" for k, v in facts.items()))
        md.append("")
    md += ["![accuracy vs size](report.png)", "", "TensorBoard: `tensorboard --logdir logs`", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    _plot(report["results"], run_dir / "report.png")
