"""Writes a run's report: report.json, report.md (a table) and report.png (accuracy vs size)."""

from __future__ import annotations

import json
from pathlib import Path

from tfopt.bench._report import plot_accuracy_vs_size


def _fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def _count(n) -> str:
    return "-" if n is None else f"{n:,}"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| stage | format | accuracy | size | gzip size | params | MACs | latency p50 (ms) | latency p99 (ms) | parity with Keras |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            f"{_fmt_bytes(r['gzip_bytes'])} | {_count(r.get('params'))} | {_count(r.get('macs'))} | "
            f"{lat.get('p50', float('nan')):.3f} | "
            f"{lat.get('p99', float('nan')):.3f} | {parity} |"
        )
    return "\n".join(lines)


def throughput_table(rows: list[dict]) -> str:
    lines = [
        "| stage | format | clients | req/s | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for level in r.get("concurrency") or []:
            lat = level.get("latency_ms", {})
            lines.append(
                f"| {r['stage']} | {r['format']} | {level['clients']} | {level['throughput_rps']:.0f} | "
                f"{lat.get('p50', float('nan')):.3f} | {lat.get('p99', float('nan')):.3f} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


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
    load = throughput_table(report["results"])
    if load:
        md += ["## Under concurrent load", "", load, ""]
    if report.get("steps"):
        md += ["## Steps", ""]
        for stage, facts in report["steps"].items():
            md.append(f"- **{stage}**: " + ", ".join(f"{k}={v}" for k, v in facts.items()))
        md.append("")
    md += ["![accuracy vs size](report.png)", "", "TensorBoard: `tensorboard --logdir logs`", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    plot_accuracy_vs_size(
        [r for r in report["results"] if r["format"] != "keras"], run_dir / "report.png"
    )
