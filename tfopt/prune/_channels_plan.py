"""`ChannelPlan`: what `prune_channels` removes, per layer and per group, before anything is built."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LayerPlan:
    """One layer's channels, parameters and multiply-accumulates before and after pruning.

    ``status`` is ``"pruned"`` (some count drops), ``"kept"`` (nothing changes) or ``"skipped"``
    (tfopt cannot prune through this layer: it is left whole, ``reason`` says why).
    """

    name: str
    type: str
    channels_in: tuple[int, int]
    channels_out: tuple[int, int]
    params: tuple[int, int]
    macs: tuple[int | None, int | None]
    status: str
    reason: str | None = None


@dataclass
class GroupPlan:
    """Coupled channels pruned together: the same indices are kept in every member."""

    id: int
    size: int
    keep: int
    producers: list[str]
    frozen: str | None
    importance: str
    kept_indices: list[int] = field(repr=False, default_factory=list)


def _fmt_int(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _pair(p, fmt=str) -> str:
    return fmt(p[0]) if p[0] == p[1] else f"{fmt(p[0])} -> {fmt(p[1])}"


@dataclass
class ChannelPlan:
    """The plan of a channel-pruning run; ``str(plan)`` is a readable table.

    Attributes:
        ratio: fraction of channels removed in every prunable group (``allocation="uniform"``)
            or of all prunable channels together (``"global"``).
        round_to: kept channel counts are multiples of it (None: no rounding).
        importance: the importance criterion's name.
        layers: a `LayerPlan` per layer with weights, and per layer left whole.
        groups: a `GroupPlan` per group of coupled channels (frozen ones included).
        skipped: ``{layer name: reason}`` for the layers tfopt cannot prune through.
        notes: anything else worth knowing (e.g. an importance fallback).
        allocation: how the pruning was spread over the groups: ``"uniform"`` or ``"global"``.
    """

    ratio: float
    round_to: int | None
    importance: str
    layers: list[LayerPlan]
    groups: list[GroupPlan]
    skipped: dict[str, str]
    notes: list[str] = field(default_factory=list)
    allocation: str = "uniform"

    @property
    def params_before(self) -> int:
        return sum(x.params[0] for x in self.layers)

    @property
    def params_after(self) -> int:
        return sum(x.params[1] for x in self.layers)

    @property
    def macs_before(self) -> int:
        return sum(x.macs[0] or 0 for x in self.layers)

    @property
    def macs_after(self) -> int:
        return sum(x.macs[1] or 0 for x in self.layers)

    @property
    def macs_reduction(self) -> float:
        """Fraction of the MACs removed (0.5 = half the MACs are gone)."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    @property
    def params_reduction(self) -> float:
        """Fraction of the parameters removed."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def report(self):
        """The plan as the `tfopt.Report` every technique gives: layers narrowed, layers skipped."""
        from tfopt._rewrite import Entry, Report

        report = Report("prune_channels", details={"notes": list(self.notes)})
        for x in self.layers:
            if x.status == "pruned":
                note = f"channels in {_pair(x.channels_in)}, out {_pair(x.channels_out)}"
                report.entries.append(Entry(x.name, x.type, "changed", note))
            elif x.status == "skipped" or x.reason:
                report.entries.append(Entry(x.name, x.type, "skipped", x.reason or ""))
        return report

    def layer(self, name: str) -> LayerPlan:
        """The `LayerPlan` of the layer called ``name``."""
        for x in self.layers:
            if x.name == name:
                return x
        raise KeyError(
            f"No layer named {name!r} in the plan. Layers: {[x.name for x in self.layers]}"
        )

    def to_dict(self) -> dict:
        """Plain JSON-ready values, totals included."""
        d = asdict(self)
        d.update(
            params_before=self.params_before,
            params_after=self.params_after,
            macs_before=self.macs_before,
            macs_after=self.macs_after,
            macs_reduction=self.macs_reduction,
            params_reduction=self.params_reduction,
        )
        return d

    def table(self, *, all_layers: bool = False) -> str:
        """A Markdown table, one row per layer whose counts change or that is left whole.

        Args:
            all_layers: list unchanged layers too. Defaults to False.

        Returns:
            The table as a string, with a totals row.
        """
        rows = [
            "| layer | type | channels in | channels out | params | MACs | status |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in self.layers:
            if not all_layers and x.status == "kept" and not x.reason:
                continue
            status = x.status + (f": {x.reason}" if x.reason else "")
            rows.append(
                f"| {x.name} | {x.type} | {_pair(x.channels_in)} | {_pair(x.channels_out)} | "
                f"{_pair(x.params, _fmt_int)} | {_pair(x.macs, _fmt_int)} | {status} |"
            )
        rows.append(
            f"| **total** | | | | {_fmt_int(self.params_before)} -> {_fmt_int(self.params_after)} "
            f"({-self.params_reduction:+.1%}) | {_fmt_int(self.macs_before)} -> "
            f"{_fmt_int(self.macs_after)} ({-self.macs_reduction:+.1%}) | |"
        )
        return "\n".join(rows)

    def __str__(self) -> str:
        prunable = [g for g in self.groups if not g.frozen]
        scope = "per prunable group" if self.allocation == "uniform" else "over all groups"
        head = (
            f"Channel pruning plan: ratio={self.ratio:.4g} (fraction of channels removed "
            f"{scope}), allocation={self.allocation!r}, importance={self.importance!r}, "
            f"round_to={self.round_to}\n"
            f"{len(prunable)} prunable groups, {len(self.groups) - len(prunable)} frozen; "
            f"params {self.params_before:,} -> {self.params_after:,}, "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_reduction:.1%} fewer)"
        )
        parts = [head, self.table()]
        if self.skipped:
            parts.append(
                "Left whole (not supported): "
                + "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
            )
        parts.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(parts)

    def __repr__(self) -> str:
        return (
            f"ChannelPlan(ratio={self.ratio:.4g}, allocation={self.allocation!r}, "
            f"params={self.params_before}->{self.params_after}, "
            f"macs={self.macs_before}->{self.macs_after}, skipped={list(self.skipped)})"
        )
