"""Writes a run's report: report.json, report.md (a table) and report.png (accuracy vs size)."""

from __future__ import annotations

import json
from pathlib import Path

from tfopt.bench._report import micro_table, plot_accuracy_vs_size


def _fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def _count(n) -> str:
    return "-" if n is None else f"{n:,}"


def _reference(rows: list[dict]) -> dict | None:
    """The row size ratios are measured against: the float32 TFLite export of the baseline."""
    return next(
        (
            r
            for r in rows
            if (r["stage"], r["format"]) == ("baseline", "tflite") and r["gzip_bytes"]
        ),
        None,
    )


def gzip_ratio(row: dict, reference: dict | None) -> float | None:
    """How many times smaller ``row``'s artifact is than ``reference``'s, gzip size to gzip size
    (None for Keras files, whose zip container is not an artifact, or without a reference)."""
    if reference is None or row["format"] == "keras" or not row.get("gzip_bytes"):
        return None
    return reference["gzip_bytes"] / row["gzip_bytes"]


def markdown_table(rows: list[dict]) -> str:
    reference = _reference(rows)
    ratio_head = " x smaller (gzip vs baseline tflite gzip) |" if reference else ""
    lines = [
        "| stage | format | accuracy | size | gzip size |"
        + ratio_head
        + " params | MACs | latency p50 (ms) | latency p99 (ms) | parity with Keras |",
        "|---|---|---|---|---|" + ("---|" if reference else "") + "---|---|---|---|---|",
    ]
    for r in rows:
        check = r.get("check")
        parity = (
            "-"
            if not check
            else f"{check['argmax_agreement']:.1%} argmax, max diff {check['max_abs_diff']:.2g}"
        )
        lat = r.get("latency_ms") or {}
        ratio = ""
        if reference:
            value = gzip_ratio(r, reference)
            ratio = " - |" if value is None else f" {value:.1f}x |"
        lines.append(
            f"| {r['stage']} | {r['format']} | {r['accuracy']:.4f} | {_fmt_bytes(r['bytes'])} | "
            f"{_fmt_bytes(r['gzip_bytes'])} |{ratio} {_count(r.get('params'))} | "
            f"{_count(r.get('macs'))} | {lat.get('p50', float('nan')):.3f} | "
            f"{lat.get('p99', float('nan')):.3f} | {parity} |"
        )
    return "\n".join(lines)


def throughput_table(rows: list[dict]) -> str:
    lines = [
        "| stage | format | clients | seconds | requests | errors | req/s | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for level in r.get("concurrency") or []:
            lat = level.get("latency_ms", {})
            lines.append(
                f"| {r['stage']} | {r['format']} | {level['clients']} | "
                f"{level.get('seconds', float('nan')):.1f} | {level.get('requests', 0)} | "
                f"{level.get('errors', 0)} | {level['throughput_rps']:.0f} | "
                f"{lat.get('p50', float('nan')):.3f} | {lat.get('p99', float('nan')):.3f} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def render_value(value, *, depth: int = 0) -> str:
    """A record's value as readable text: ``0.8``, ``conv1=80.0%``-style ``key=value`` lists,
    nested mappings in parentheses; never a raw Python repr."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        if not value:
            return "none"
        parts = [f"{k}={render_value(v, depth=depth + 1)}" for k, v in value.items()]
        text = ", ".join(parts)
        return f"({text})" if depth else text
    if isinstance(value, list | tuple):
        if not value:
            return "none"
        text = ", ".join(render_value(v, depth=depth + 1) for v in value)
        return f"[{text}]" if depth else text
    return str(value)


def steps_markdown(steps: dict[str, dict]) -> str:
    """The records of each recipe step as a Markdown table: stage | fact | value."""
    lines = ["| stage | fact | value |", "|---|---|---|"]
    for stage, facts in steps.items():
        for i, (key, value) in enumerate(facts.items()):
            text = render_value(value).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {stage if i == 0 else ''} | {key} | {text} |")
    return "\n".join(lines)


def write_report(report: dict, run_dir: Path) -> None:
    run_dir = Path(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    md = [
        f"# tfopt run `{report['name']}`",
        "",
        f"Dataset: {report['dataset']}. Wall time: {report['seconds']:.0f} s.",
        "",
        "Accuracy is measured on the test split through each artifact's own runtime (Keras, LiteRT, "
        "TFLite Micro for tflm).",
        "Latency: one sample per request, single thread, after warm-up.",
        "Params and MACs are those of the model each artifact was exported from (per sample; "
        "tfopt's pruning/QAT/cluster variables are not params). Size ratios are gzip to gzip.",
        "",
        markdown_table(report["results"]),
        "",
    ]
    micro = micro_table(report["results"])
    if micro:  # int8 .tflite artifacts run in TFLite Micro too: arena (peak RAM) and flash
        md += ["## On a microcontroller (TensorFlow Lite for Microcontrollers)", *micro, ""]
    robust = [r for r in report["results"] if r.get("robust_accuracy") is not None]
    if robust:
        md += [
            "## Under adversarial attack",
            "",
            "| stage | format | accuracy | robust accuracy | attack |",
            "|---|---|---|---|---|",
        ]
        md += [
            f"| {r['stage']} | {r['format']} | {r['accuracy']:.4f} | {r['robust_accuracy']:.4f} "
            f"| {r['robust_attack']} |"
            for r in robust
        ]
        md.append("")
    load = throughput_table(report["results"])
    if load:
        md += ["## Under concurrent load", "", load, ""]
    if report.get("steps"):
        md += ["## Steps", "", steps_markdown(report["steps"]), ""]
    md += ["![accuracy vs size](report.png)", "", "TensorBoard: `tensorboard --logdir logs`", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    reference = _reference(report["results"])  # each point's ratio, as in the table
    plot_accuracy_vs_size(
        [r for r in report["results"] if r["format"] != "keras"],
        run_dir / "report.png",
        reference_gzip_bytes=reference and reference["gzip_bytes"],
    )
