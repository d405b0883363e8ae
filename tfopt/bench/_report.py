"""Tables, JSON, Markdown and PNG plots for a list of benchmark results."""

from __future__ import annotations

import json
from pathlib import Path


def _as_dict(r) -> dict:
    return r.to_dict() if hasattr(r, "to_dict") else dict(r)


def _kib(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def _num(v, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _si(n) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def micro_table(rows) -> list[str]:
    """The TFLite Micro lines of `format_table` (arena, flash, agreement with LiteRT), or none
    when no result was measured in TFLM."""
    rows = [_as_dict(r) for r in rows if _as_dict(r).get("micro")]
    if not rows:
        return []
    lines = [
        "",
        "| artifact | TFLM arena (peak RAM) | flash (flatbuffer) | TFLM vs LiteRT argmax | ops |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        m = r["micro"]
        if m.get("skipped"):
            lines.append(f"| {r['artifact']} | not run in TFLM: {m['skipped']} | | | |")
            continue
        agree = m.get("tflm_agreement")
        agree = "-" if agree is None else f"{agree:.2%} of {m['samples']}"
        lines.append(
            f"| {r['artifact']} | {m['arena_bytes']:,} B | {m['flash_bytes']:,} B | {agree} | "
            f"{', '.join(m.get('ops') or [])} |"
        )
    lines += [
        "",
        "Flash: the model flatbuffer only (the TFLM library and kernels are not counted).",
    ]
    return lines


def format_table(results) -> str:
    """A Markdown table: one row per artifact (accuracy, size, params, MACs, latency), then one row
    per artifact and concurrency level (throughput, latency percentiles, mean batch size)."""
    rows = [_as_dict(r) for r in results]
    lines = [
        "| artifact | runtime | accuracy | KiB | gzip KiB | params | MACs (source) | p50 ms | p90 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lat = r.get("latency_ms") or {}
        macs = "-" if r.get("macs") is None else f"{_si(r['macs'])} ({r.get('ops_source')})"
        lines.append(
            f"| {r['artifact']} | {r['runtime']} | {_num(r.get('accuracy'), '{:.4f}')} | "
            f"{_kib(r.get('bytes'))} | {_kib(r.get('gzip_bytes'))} | {_si(r.get('params'))} | {macs} | "
            f"{_num(lat.get('p50'))} | {_num(lat.get('p90'))} | {_num(lat.get('p99'))} |"
        )
    lines += micro_table(rows)
    levels = [(r, c) for r in rows for c in r.get("concurrency") or []]
    if levels:
        lines += [
            "",
            "| artifact | clients | workers (processes) | micro-batch | seconds | requests | errors | req/s | p50 ms | p90 ms | p99 ms | batch: mean / per request |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r, c in levels:
            mb = f"max {c['max_batch']}, {c['max_wait_ms']:g} ms" if c["micro_batch"] else "no"
            lat = c["latency_ms"]
            lines.append(
                f"| {r['artifact']} | {c['clients']} | {c['workers']} ({c.get('processes', 1)}) | {mb} | "
                f"{c.get('seconds', float('nan')):.1f} | {c.get('requests', 0)} | {c.get('errors', 0)} | "
                f"{c['throughput_rps']:.0f} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
                f"{c['mean_batch_size']:.2f} / {c.get('request_batch_size', 1.0):.1f} |"
            )
    return "\n".join(lines) + "\n"


def plot_latency_vs_concurrency(results, path) -> Path | None:
    """Plots p50/p99 latency and throughput against clients; None if no result has two levels."""
    rows = [_as_dict(r) for r in results if len(_as_dict(r).get("concurrency") or []) >= 2]
    if not rows:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for r in rows:
        label = Path(r["artifact"]).name
        if r["concurrency"][0]["micro_batch"]:
            label += " (micro-batch)"
        c = [lv["clients"] for lv in r["concurrency"]]
        line = ax1.plot(
            c, [lv["latency_ms"]["p50"] for lv in r["concurrency"]], "o-", label=f"{label} p50"
        )
        ax1.plot(
            c,
            [lv["latency_ms"]["p99"] for lv in r["concurrency"]],
            "x--",
            color=line[0].get_color(),
            label=f"{label} p99",
        )
        ax2.plot(c, [lv["throughput_rps"] for lv in r["concurrency"]], "o-", label=label)
    for ax, ylabel in ((ax1, "latency (ms)"), (ax2, "throughput (requests/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_yscale("log")
    fig.suptitle("Latency and throughput vs concurrency")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def accuracy_limits(values, *, min_span: float = 0.05) -> tuple[float, float]:
    """The accuracy axis of a plot: the values with a margin, at least ``min_span`` (5 points)
    tall and inside [0, 1], so that a 0.2-point difference does not fill the whole plot."""
    lo, hi = float(min(values)), float(max(values))
    pad = max(0.01, 0.15 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    if lo < 0.0:
        lo, hi = 0.0, max(hi - lo, min_span)
    if hi > 1.0:
        lo, hi = max(0.0, lo - (hi - 1.0)), 1.0
    return lo, hi


def accuracy_size_figure(results, *, reference_gzip_bytes: int | None = None):
    """The figure of `plot_accuracy_vs_size`: one labelled point per result that has an accuracy
    and a gzip size, or None if none has.

    Each point is labelled with its file name, its gzip size in KiB and, when
    ``reference_gzip_bytes`` is given, how many times smaller it is than that reference.
    """
    rows = [_as_dict(r) for r in results]
    rows = [r for r in rows if r.get("accuracy") is not None and r.get("gzip_bytes") is not None]
    if not rows:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    kib = [r["gzip_bytes"] / 1024 for r in rows]
    for r, x in zip(rows, kib):
        label = f"{Path(r['artifact']).name}\n{x:,.1f} KiB"
        if reference_gzip_bytes:
            label += f", {reference_gzip_bytes / r['gzip_bytes']:.1f}x smaller"
        ax.scatter(x, r["accuracy"])
        ax.annotate(
            label, (x, r["accuracy"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    if max(kib) > 10 * min(kib):  # a log axis only where the sizes span a decade
        ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.4g}")  # 12.5, not 1.25x10^1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.margins(x=0.25)  # room for the labels of the largest artifact
    ax.set_xlabel("gzip size (KiB)")
    ax.set_ylim(*accuracy_limits([r["accuracy"] for r in rows]))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy vs size")
    fig.tight_layout()
    return fig


def plot_accuracy_vs_size(results, path, *, reference_gzip_bytes: int | None = None) -> Path | None:
    """Plots accuracy against gzip size for the results that have both; None if there are none.

    The accuracy axis spans at least 5 points (`accuracy_limits`); each point says its size and,
    given ``reference_gzip_bytes``, its ratio to that reference (`accuracy_size_figure`)."""
    fig = accuracy_size_figure(results, reference_gzip_bytes=reference_gzip_bytes)
    if fig is None:
        return None
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_report(
    results, out_dir, *, title: str = "Benchmark", stem: str = "bench"
) -> dict[str, Path]:
    """Writes ``<stem>.json``, ``<stem>.md`` and the PNG plots for a list of results.

    Args:
        results: `BenchResult` objects or their ``to_dict()`` dicts.
        out_dir: the directory to write to (created if needed).
        title: the Markdown report's heading. Defaults to "Benchmark".
        stem: the file name stem. Defaults to "bench".

    Returns:
        ``{"json": path, "markdown": path, "latency_plot": path, "size_plot": path}`` (the plots
        only when there was something to plot).

    Example:
        >>> tfopt.bench.write_report([res_float, res_int8], "runs/x")["markdown"]
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_as_dict(r) for r in results]
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(rows, indent=2, default=str) + "\n")
    latency = plot_latency_vs_concurrency(rows, out / f"{stem}_latency_vs_concurrency.png")
    size = plot_accuracy_vs_size(rows, out / f"{stem}_accuracy_vs_size.png")
    md = [f"# {title}", "", format_table(rows)]
    loads = [r["load_avg"] for r in rows if r.get("load_avg")]
    if loads:
        md.append(
            f"Load average (1, 5, 15 min) at the start: {', '.join(f'{v:.2f}' for v in loads[0])} "
            "— latency and throughput depend on what else the machine runs.\n"
        )
    sources = sorted({r["ops_source"] for r in rows if r.get("ops_source")})
    if sources:
        md.append(
            f"Params and MACs counted from: {', '.join(sources)} (dense, convolution, attention, "
            "recurrent and matmul layers; per sample).\n"
        )
    if latency:
        paths["latency_plot"] = latency
        md.append(f"![latency vs concurrency]({latency.name})\n")
    if size:
        paths["size_plot"] = size
        md.append(f"![accuracy vs size]({size.name})\n")
    paths["markdown"].write_text("\n".join(md))
    return paths
