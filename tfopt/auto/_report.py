"""The report of an automatic optimization: report.json, report.md and pareto.png."""

from __future__ import annotations

import json
from pathlib import Path

from tfopt.auto._candidate import rejection_text, resolution_text


def _kb(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KB"


def _acc(a) -> str:
    return "-" if a is None else f"{a:.4f}"


def _delta(a, base) -> str:
    return "-" if a is None or base is None else f"{100 * (a - base):+.2f} pt"


def _delta_with_interval(c: dict, split: str, base: dict) -> str:
    """The paired delta with its interval when known, else the plain difference."""
    paired = c.get(f"{split}_delta")
    if paired:
        return paired_cell(paired)
    return _delta(c.get(f"{split}_accuracy"), base.get(f"{split}_accuracy"))


def _ms(x) -> str:
    return "-" if x is None else f"{x:.3f} ms"


def _b(n) -> str:
    return "-" if n is None else f"{n:,} B"


def paired_cell(d: dict | None) -> str:
    """A `tfopt._stats.PairedDelta` dict as ``+0.10 pt [-0.32, +0.52]`` (``-`` when unknown)."""
    if not d:
        return "-"
    return f"{100 * d['delta']:+.2f} pt [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def tflm_cell(c: dict) -> str:
    """TFLite Micro's argmax agreement with LiteRT for a candidate, or why it was not measured."""
    a = c.get("tflm_agreement")
    if a is not None:
        return f"{a:.1%}" + ("" if a >= 0.99 else " (below 99%)")
    note = c.get("tflm_note")
    return f"not measured: {note}" if note else "-"


def fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(c, best, baseline: dict, elapsed: float) -> str:
    """One line about a finished candidate (a `Candidate`), for the console."""
    if not c.completed:
        err = (c.error or "").splitlines()[0][:140] if c.error else ""
        return f"[auto] trial {c.trial_id}  {c.status}  {err}  [{fmt_time(c.seconds)}]"
    drop = 100 * (c.val_accuracy - baseline["val_accuracy"])
    if c.val_delta:  # the paired 95% interval of the difference on the same samples
        drop_text = (
            f"{drop:+.2f} [{100 * c.val_delta['low']:+.2f}, {100 * c.val_delta['high']:+.2f}]"
        )
    else:
        drop_text = f"{drop:+.2f}"
    test_part = ""
    if c.test_accuracy is not None:
        test_part = (
            f" test {c.test_accuracy:.4f} "
            f"({100 * (c.test_accuracy - baseline['test_accuracy']):+.2f})"
        )
    origin = f" (refines {c.refined_from})" if c.refined_from else ""
    micro = ""
    if c.arena_bytes is not None:
        micro = f"  arena {c.arena_bytes:,} B flash {c.flash_bytes:,} B"
    verdict = "within budget" if c.within_budget else "over budget  "
    if c.rejected:
        verdict = f"rejected ({c.rejected})"
    return (
        f"[auto] trial {c.trial_id}  {' + '.join(c.stages) or 'none':<42}{origin} val "
        f"{c.val_accuracy:.4f} ({drop_text}){test_part}  gzip {c.gzip_bytes / 1024:.1f} KB "
        f"({c.ratio:.1f}x gzip-to-gzip)  p50 {c.latency_ms:.3f} ms{micro}  "
        f"{verdict}  best: "
        + (f"{best.trial_id} {best.gzip_bytes / 1024:.1f} KB" if best else "none")
        + f"  [{fmt_time(c.seconds)}, total {fmt_time(elapsed)}]"
    )


def write_json(path: Path, data: dict) -> Path:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path


def markdown(data: dict) -> str:
    """Renders the report dict as Markdown."""
    lines = [
        *_settings_lines(data),
        *_budget_lines(data.get("budgets") or {}),
        *_phase_lines(data),
        *_summary_table(data),
        "",
        *_outcome_lines(data),
        *_front_lines(data),
        *_trial_lines(data["candidates"]),
        *_sensitivity_lines(data.get("sensitivity"), data.get("plans") or {}),
    ]
    if data.get("missing_techniques"):
        lines += [
            "",
            f"Not available in this installation: {', '.join(data['missing_techniques'])}.",
        ]
    return "\n".join(lines) + "\n"


def _settings_lines(data: dict) -> list[str]:
    """The title, the target and accuracy budget, how the search went, how it accepts."""
    lines = [
        f"# tfopt auto: {data.get('name', 'report')}",
        "",
        f"- target: `{data['target']}`, objective: **{data['objective']}**, accuracy budget: "
        f"{100 * data['max_accuracy_drop']:.2f} pt below the float baseline on the validation data "
        "(measured through the exported artifacts; selection uses the validation data only"
        + (
            ", the test data is measured and reported, never used to choose"
            if data["baseline"].get("test_accuracy") is not None
            else ""
        )
        + ")",
        *([f"- {data['target_note']}"] if data.get("target_note") else []),
        f"- trials: {data['trials_completed']} completed, {data['trials_failed']} failed; stopped: "
        f"{data['stopped']}; wall time {data['elapsed_s']:.0f} s",
        f"- techniques searched: {', '.join(data['techniques']) or 'none (PTQ only)'}",
    ]
    if data.get("resolution"):
        lines.append(f"- {resolution_text(data['resolution'], data['max_accuracy_drop'])}")
        lines.append(
            "- acceptance: a candidate is within the accuracy budget when its val accuracy minus "
            "the baseline's on the same samples (the paired point estimate) is at most the budget "
            "below 0; its 95% paired interval is shown, not required (on a small split a "
            "lower-bound rule rejects even a model whose delta is 0)"
        )
    return lines


def _budget_lines(all_budgets: dict) -> list[str]:
    """The robustness, memory and latency budgets, when set."""
    lines = []
    budgets = {k: all_budgets.get(k) for k in ("max_ram", "max_flash")}
    budgets = {k: v for k, v in budgets.items() if v is not None}
    if all_budgets.get("min_robust_accuracy") is not None:
        lines.append(
            f"- robustness budget: val accuracy under PGD-10 (L-inf eps="
            f"{all_budgets['robust_epsilon']:g}, examples made on each candidate's Keras model and "
            f"run through its artifact) >= {all_budgets['min_robust_accuracy']:g}; candidates "
            "below are rejected, with the reason below"
        )
    if budgets:
        lines.append(
            "- memory budgets: "
            + ", ".join(
                f"{'RAM (TFLite Micro arena)' if k == 'max_ram' else 'flash (raw flatbuffer)'} "
                f"<= {v:,} B"
                for k, v in budgets.items()
            )
            + "; candidates over them are rejected, with the reason below"
        )
    if all_budgets.get("max_latency_ms") is not None:
        lines.append(
            f"- latency budget: p50 of one request through the artifact <= "
            f"{all_budgets['max_latency_ms']:g} ms (on the machine that searched); candidates "
            "over it are rejected, with the reason below"
        )
    return lines


def _phase_lines(data: dict) -> list[str]:
    """How the refinement went and what the screening trained on."""
    lines = []
    ref = data.get("refinement")
    if ref:
        lines.append(
            f"- refinement (trials r...): {ref['runs']} run(s), stopped: {ref['stopped']}; the "
            f"smallest screened candidates within {100 * ref['margin']:.0f} pt of the budget "
            f"re-run with {ref['epochs_factor']}x the fine-tuning epochs"
            + (" and distillation from the float model" if ref.get("distill") else "")
        )
    scr = data.get("screening")
    if scr and scr["train_samples"] < scr["of"]:
        lines.append(
            f"- screening fine-tuned on {scr['train_samples']:,} of the {scr['of']:,} training "
            "samples (a fixed random subset); refinement on all of them"
        )
    return lines


def _summary_table(data: dict) -> list[str]:
    """The float baseline's row and the best candidate's."""
    base, best = data["baseline"], data.get("best")
    lines = [
        "",
        "| artifact | bytes (flash) | gzip | gzip ratio | val acc | test acc | latency p50 | "
        "TFLM arena (RAM) | TFLM vs LiteRT argmax |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| float baseline (TFLite float32) | {base['bytes']} | {base['gzip_bytes']} | 1.0x | "
        f"{_acc(base['val_accuracy'])} | {_acc(base.get('test_accuracy'))} | "
        f"{_ms(base['latency_ms'])} | {_b(base.get('arena_bytes'))} | {tflm_cell(base)} |",
    ]
    if best:
        lines.append(
            f"| best: trial {best['trial_id']}"
            + (f" (refines {best['refined_from']})" if best.get("refined_from") else "")
            + f" ({' + '.join(best['stages'])}) | {best['bytes']} | "
            f"{best['gzip_bytes']} | {best['ratio']:.1f}x | {_acc(best['val_accuracy'])} "
            f"({_delta_with_interval(best, 'val', base)}) | "
            f"{_acc(best.get('test_accuracy'))} "
            f"({_delta_with_interval(best, 'test', base)}) | "
            f"{_ms(best['latency_ms'])} | {_b(best.get('arena_bytes'))} | {tflm_cell(best)} |"
        )
    return lines


def _outcome_lines(data: dict) -> list[str]:
    """Where the best artifact and its recipe are, or, when none fits, the rejections and the
    closest candidate."""
    best = data.get("best")
    if not best:
        return _no_fit_lines(data)
    lines = [
        f"Best artifact: `{best['artifact']}` (gzip ratio = the float32 TFLite's gzip bytes / "
        "the artifact's gzip bytes). Accuracy deltas are paired (the same samples as the "
        "baseline), with their 95% interval in brackets."
    ]
    if best.get("test_delta"):
        t = best["test_delta"]
        lines.append(
            f"Its test delta: {paired_cell(t)} over {t['n']} samples ({t['only_a']} only the "
            f"baseline gets right, {t['only_b']} only the candidate; McNemar p = "
            f"{t['p_value']:.3f})."
        )
    if data.get("recipe"):
        lines.append(f"Its `tfopt run` config: `{data['recipe']}` (`tfopt run {data['recipe']}`).")
    return lines


def _no_fit_lines(data: dict) -> list[str]:
    closest = data.get("closest")
    lines = ["**No candidate met the budgets.**"]
    if data.get("rejections") is not None:
        lines.append(
            "Rejections per budget: "
            + rejection_text(data["rejections"], len(data["candidates"]), data["budgets"])
            + "."
        )
    if closest:
        lines.append(
            f"The closest candidate, **outside the budget** ({', '.join(closest['misses'])}), "
            f"is trial {closest['trial_id']} ({' + '.join(closest['stages'])}): val "
            f"{_acc(closest['val_accuracy'])} "
            f"({_delta_with_interval(closest, 'val', data['baseline'])}), "
            f"{_kb(closest['gzip_bytes'])} gzip; written to `{closest['artifact']}` (the "
            "fewest budgets missed, then the most accurate, then the smallest)."
        )
    return lines


# how the Pareto front's heading names each objective
_OBJECTIVE_NAMES = {
    "accuracy": "val accuracy max",
    "gzip_bytes": "gzip size min",
    "latency_ms": "latency min",
    "arena_bytes": "TFLM arena min",
    "flash_bytes": "flash min",
}


def _front_lines(data: dict) -> list[str]:
    """The Pareto front's table."""
    objectives = data.get("front_objectives") or {"accuracy": "max", "gzip_bytes": "min"}
    lines = [
        "",
        f"## Pareto front ({', '.join(_OBJECTIVE_NAMES.get(k, k) for k in objectives)})",
        "",
        "| trial | recipe | val acc | test acc | gzip | gzip ratio | latency p50 | TFLM arena | "
        "flash | TFLM vs LiteRT | in budget (val) | budgets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cands = {c["trial_id"]: c for c in data["candidates"]}
    for tid in data["front"]:
        c = cands[tid]
        lines.append(
            f"| {tid} | {' + '.join(c['stages'])} | {_acc(c['val_accuracy'])} | "
            f"{_acc(c.get('test_accuracy'))} | {_kb(c['gzip_bytes'])} | {c['ratio']:.1f}x | "
            f"{_ms(c['latency_ms'])} | {_b(c.get('arena_bytes'))} | {_b(c.get('flash_bytes'))} | "
            f"{tflm_cell(c)} | {'yes' if c['within_budget'] else 'no'} | "
            f"{'rejected: ' + c['rejected'] if c.get('rejected') else 'fits'} |"
        )
    return lines


def _trial_lines(candidates: list[dict]) -> list[str]:
    """The table of every trial, failed ones with their error's first line."""
    lines = [
        "",
        "## All trials",
        "",
        "| trial | status | recipe | val acc | test acc | gzip | gzip ratio | TFLM arena | "
        "flash | TFLM vs LiteRT | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in candidates:
        if c["status"] == "COMPLETED":
            status = f"rejected: {c['rejected']}" if c.get("rejected") else "ok"
            lines.append(
                f"| {c['trial_id']} | {status} | {' + '.join(c['stages'])}"
                + (f" (refines {c['refined_from']})" if c.get("refined_from") else "")
                + f" | {_acc(c['val_accuracy'])} | "
                f"{_acc(c.get('test_accuracy'))} | {_kb(c['gzip_bytes'])} | {c['ratio']:.1f}x | "
                f"{_b(c.get('arena_bytes'))} | {_b(c.get('flash_bytes'))} | {tflm_cell(c)} | "
                f"{c['seconds']:.0f} |"
            )
        else:
            err = str(c.get("error", "")).splitlines()[0][:120] if c.get("error") else ""
            status = "error" if c["status"] == "ERROR" else "failed"
            lines.append(
                f"| {c['trial_id']} | {status} | {err} | - | - | - | - | - | - | - | "
                f"{c['seconds']:.0f} |"
            )
    return lines


def _sensitivity_lines(sens: dict | None, plans: dict) -> list[str]:
    """The per-layer sensitivity table and the plans drawn from it."""
    if not sens:
        return []
    ratios = sorted({r for s in sens["layers"].values() for r in s["channels"]}, key=float)
    lines = [
        "",
        f"## Per-layer sensitivity (accuracy lost, one layer at a time, no fine-tuning; "
        f"{sens['samples']} val samples, float accuracy {sens['accuracy']:.4f})",
        "",
        "| layer | share of weights | "
        + " | ".join(f"{float(r):.0%} channels cut" for r in ratios)
        + " | 80% sparsity | 4-bit weights |",
        "|---|---|" + "---|" * (len(ratios) + 2),
    ]
    for name, s in sens["layers"].items():
        cuts = " | ".join(f"{100 * s['channels'][r]:.1f} pt" for r in ratios)
        lines.append(
            f"| {name} | {s['share']:.1%} | {cuts} | {100 * s['sparsity']:.1f} pt | "
            f"{100 * s['int4']:.1f} pt |"
        )
    for label, plan in plans.items():
        cuts = ", ".join(f"{n} {r:g}" for n, r in plan["channels"].items()) or "none"
        lines.append(
            f"\n`{label}` (one-shot loss <= {label.split('@')[1]}): channel cuts {cuts}; pruned: "
            f"{', '.join(plan['prune']) or 'none'}; 4-bit: {', '.join(plan['bits4']) or 'none'}"
        )
    return lines


def plot(path: Path, data: dict) -> Path:
    """Draws val accuracy vs gzip size and vs latency; the front and the budget line marked."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    base = data["baseline"]
    done = [c for c in data["candidates"] if c["status"] == "COMPLETED"]
    front = [c for c in done if c["trial_id"] in set(data["front"])]
    floor = base["val_accuracy"] - data["max_accuracy_drop"]
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, key, label in (
        (axes[0], "gzip_bytes", "gzip size (KB, log)"),
        (axes[1], "latency_ms", "latency p50 (ms, log)"),
    ):
        scale = 1024 if key == "gzip_bytes" else 1
        ax.scatter(
            [c[key] / scale for c in done],
            [c["val_accuracy"] for c in done],
            c="#999999",
            s=18,
            label="candidates",
        )
        pts = sorted((c[key] / scale, c["val_accuracy"]) for c in front)
        if pts:
            ax.plot(*zip(*pts), "o-", color="#d62728", ms=5, label="Pareto front")
        bx = (base["gzip_bytes"] if key == "gzip_bytes" else base["latency_ms"]) / scale
        ax.scatter(
            [bx], [base["val_accuracy"]], marker="*", s=160, c="#1f77b4", label="float baseline"
        )
        ax.axhline(floor, ls="--", color="#2ca02c", lw=1, label="accuracy budget")
        if data.get("best"):
            b = data["best"]
            ax.scatter(
                [b[key] / scale],
                [b["val_accuracy"]],
                marker="D",
                s=60,
                facecolors="none",
                edgecolors="k",
                label="best",
            )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("val accuracy (through the artifact)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"tfopt auto: {data['target']}, objective {data['objective']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_report(out_dir, data: dict) -> dict[str, Path]:
    """Writes ``report.json``, ``report.md`` and ``pareto.png`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(out_dir / "report.json", data),
        "markdown": out_dir / "report.md",
        "plot": out_dir / "pareto.png",
    }
    paths["markdown"].write_text(markdown(data))
    plot(paths["plot"], data)
    return paths
