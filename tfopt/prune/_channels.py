"""Structural channel pruning: remove whole filters/units and rebuild a smaller Keras model.

`prune_channels` analyses the model's channel dependencies (`_channels_graph`), ranks each group of
coupled channels by importance, and builds a new model with the kept channels and their weights
copied. The user's model is only read. `find_ratio` finds the ratio that removes a given fraction of
the MACs; `prune_channels_iterative` alternates pruning and fine-tuning.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence

import numpy as np

from tfopt._backend import check_model, import_keras
from tfopt._layers import resolve, spec_flag, spec_of
from tfopt._rewrite import GraphRewrite, copy_layer, copy_weights, layer_filter
from tfopt.prune._channels_graph import (
    Graph,
    Layout,
    is_producer,
    keep_count,
    layer_macs,
    layer_params,
    weight_roles,
)
from tfopt.prune._channels_plan import ChannelPlan, GroupPlan, LayerPlan

keras = import_keras()

IMPORTANCES = ("l1", "l2", "bn_gamma")
ALLOCATIONS = ("uniform", "global")


# -- argument checks ----------------------------------------------------------------------------
def _check_ratio(ratio, name: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1). Received: {name}={ratio!r}")
    return float(ratio)


def _check_round_to(round_to) -> int | None:
    if round_to is None:
        return None
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(
            f"round_to must be a positive int or None. Received: round_to={round_to!r}"
        )
    return round_to


def _check_importance(importance) -> str:
    if callable(importance):
        return getattr(importance, "__name__", type(importance).__name__)
    if importance not in IMPORTANCES:
        raise ValueError(
            f"Unrecognized importance={importance!r}. Supported: {list(IMPORTANCES)} or a "
            "callable(layer) -> per-output-channel scores."
        )
    return importance


def _check_allocation(allocation) -> str:
    if allocation not in ALLOCATIONS:
        raise ValueError(f"Unrecognized allocation={allocation!r}. Supported: {list(ALLOCATIONS)}")
    return allocation


# -- importance ---------------------------------------------------------------------------------
def _kernel_scores(layer, norm: str) -> np.ndarray:
    """The L1/L2 norm of each output channel of the layer's kernel (the last kernel its spec
    gives an output axis: a separable convolution's pointwise one)."""
    weight = [w for w in spec_of(layer).compressed() if w.out_axis is not None][-1]
    kernel = np.asarray(keras.ops.convert_to_numpy(resolve(layer, weight.attr)[2]))
    axis = weight.out_axis % kernel.ndim
    kernel = np.moveaxis(kernel, axis, -1).reshape(-1, kernel.shape[axis])
    if norm == "l1":
        return np.abs(kernel).sum(axis=0)
    return np.sqrt(np.square(kernel).sum(axis=0))


def _score_groups(graph: Graph, importance) -> list[str]:
    """Sets ``group.scores`` for every prunable group; returns notes about fallbacks."""
    producers = {info.op.name: info.op for info in graph.nodes if info.kind == "producer"}
    notes = []
    gamma: dict[int, np.ndarray] = {}
    if importance == "bn_gamma":
        for info in graph.nodes:
            op = info.op
            if not spec_flag(op, "batch_statistics") or info.kind != "tied":
                continue
            if op.gamma is None:
                continue
            g, off = np.abs(np.asarray(op.gamma)), 0
            for sid, size in info.in_layouts[0].segments:
                gid = graph.group_of[sid]
                gamma[gid] = gamma.get(gid, 0.0) + g[off : off + size]
                off += size
    fallback = []
    for group in graph.groups:
        if group.frozen:
            continue
        if importance == "bn_gamma" and group.id in gamma:
            group.scores, group.importance_source = np.asarray(gamma[group.id]), "bn_gamma"
            continue
        name = importance if importance in ("l1", "l2") else "l1"
        scores = np.zeros(group.size)
        for pname in group.producers:
            layer = producers[pname]
            if callable(importance):
                s = np.asarray(importance(layer), dtype="float64").reshape(-1)
                if s.shape != (group.size,):
                    raise ValueError(
                        f"importance callable must return one score per output channel of "
                        f"{layer.name!r}: shape ({group.size},). Received shape {s.shape}"
                    )
                name = _check_importance(importance)
            else:
                s = _kernel_scores(layer, name)
            scores = scores + s
        if importance == "bn_gamma":
            fallback.append(group.producers[0] if group.producers else str(group.id))
        group.scores, group.importance_source = scores, name
    if fallback:
        notes.append(
            f"importance='bn_gamma': no BatchNormalization follows {', '.join(fallback)}; "
            "ranked those groups by the L1 norm of their filters"
        )
    return notes


# -- planning -----------------------------------------------------------------------------------
def _kept_index(layout: Layout, kept: dict[int, np.ndarray]) -> np.ndarray:
    off, parts = 0, []
    for sid, size in layout.segments:
        parts.append(off + kept[sid])
        off += size
    base = np.concatenate(parts) if parts else np.zeros(0, dtype=int)
    if layout.repeat > 1:
        base = (np.arange(layout.repeat)[:, None] * layout.width + base[None, :]).reshape(-1)
    return base.astype(int)


def _form(layout: Layout, graph: Graph) -> tuple[int, dict[int, int]]:
    """A layout's channel count as ``const + sum(coef * keep[group])`` (frozen groups: const)."""
    const, coefs = 0, {}
    for sid, size in layout.segments:
        g = graph.groups[graph.group_of[sid]]
        if g.frozen:
            const += size * layout.repeat
        else:
            coefs[g.id] = coefs.get(g.id, 0) + layout.repeat
    return const, coefs


def _bilinear(f) -> tuple[int, int, int, int]:
    """``(d, a, b, c)`` with ``f(x, y) == d + a*x + b*y + c*x*y`` for a bilinear ``f``."""
    f00, f10, f01, f11 = f(0, 0), f(1, 0), f(0, 1), f(1, 1)
    return f00, f10 - f00, f01 - f00, f11 - f10 - f01 + f00


class _MacModel:
    """The model's MACs as a function of every prunable group's kept channel count.

    A layer's MACs are bilinear in its input and output channel counts, and those are linear in
    the groups' counts (a Concatenate adds segments, a Flatten repeats them), so the MACs saved
    by removing channels from one group are exact and cheap to evaluate.
    """

    def __init__(self, graph: Graph):
        self.terms = []  # (input channels form, output channels form, bilinear MAC coefficients)
        self.of_group: dict[int, list[int]] = {}
        for info in graph.nodes:
            if info.kind not in ("producer", "tied") or not info.in_layouts:
                continue
            f_in, f_out = _form(info.in_layouts[0], graph), _form(info.out_layouts[0], graph)
            touched = set(f_in[1]) | set(f_out[1])
            if touched:
                macs = _bilinear(lambda ci, co, info=info: layer_macs(info, ci, co) or 0)
                self.terms.append((f_in, f_out, macs))
                for gid in touched:
                    self.of_group.setdefault(gid, []).append(len(self.terms) - 1)

    def saving(self, keep: dict[int, int], gid: int, n: int) -> int:
        """MACs saved by removing ``n`` more channels from group ``gid`` (counts ``keep``)."""
        saved = 0
        for t in self.of_group.get(gid, ()):
            (c_in, a_in), (c_out, a_out), (_, a, b, c) = self.terms[t]
            x = c_in + sum(k * keep[g] for g, k in a_in.items())
            y = c_out + sum(k * keep[g] for g, k in a_out.items())
            x2, y2 = x - n * a_in.get(gid, 0), y - n * a_out.get(gid, 0)
            saved += a * (x - x2) + b * (y - y2) + c * (x * y - x2 * y2)
        return saved


class _Planner:
    """The analysed graph plus scores; makes a `ChannelPlan` for any ratio cheaply."""

    def __init__(self, model, importance, filters):
        self.importance_name = _check_importance(importance)
        self.graph = Graph(model, prunable=layer_filter(filters))
        self.notes = _score_groups(self.graph, importance)
        self.order = {
            g.id: np.argsort(-g.scores, kind="stable") for g in self.graph.groups if not g.frozen
        }
        self._macs = None

    def kept(self, ratio: float, round_to: int | None, counts=None) -> dict[int, np.ndarray]:
        """Kept channel indices per space: ``counts[group id]`` if given, else by ``ratio``."""
        kept_by_group = {}
        for g in self.graph.groups:
            if g.frozen:
                kept_by_group[g.id] = np.arange(g.size)
            else:
                k = counts[g.id] if counts else keep_count(g.size, ratio, round_to)
                kept_by_group[g.id] = np.sort(self.order[g.id][:k])
        return {sid: kept_by_group[self.graph.group_of[sid]] for sid in self.graph.group_of}

    def plan(self, ratio: float, round_to: int | None, counts=None) -> tuple[ChannelPlan, dict]:
        graph = self.graph
        kept = self.kept(ratio, round_to, counts)
        layers, indices, seen = [], {}, {}
        for info in graph.nodes:
            op = info.op
            in_idx = [_kept_index(lay, kept) for lay in info.in_layouts]
            out_idx = [_kept_index(lay, kept) for lay in info.out_layouts]
            indices[id(info.node)] = (in_idx, out_idx)
            if id(op) in seen:  # a shared (frozen) layer: one row, weights once, MACs per call
                row = seen[id(op)]
                c = info.in_layouts[0].channels if info.in_layouts else 0
                extra = layer_macs(info, c, info.out_layouts[0].channels)
                if extra is not None and row.macs[0] is not None:
                    row.macs = (row.macs[0] + extra, row.macs[1] + extra)
                continue
            is_layer = isinstance(op, keras.layers.Layer)
            weights = op.weights if is_layer else []
            if info.kind in ("merge", "concat", "flatten") or (
                not weights and info.kind != "frozen"
            ):
                continue
            c_in = (info.in_layouts[0].channels, len(in_idx[0])) if in_idx else (0, 0)
            c_out = (info.out_layouts[0].channels, len(out_idx[0])) if out_idx else (0, 0)
            p0 = sum(int(np.prod(tuple(w.shape), dtype=np.int64)) for w in weights)
            p1 = p0 if info.kind == "frozen" else layer_params(op, c_in[0], c_in[1], c_out[1])
            macs = (layer_macs(info, c_in[0], c_out[0]), layer_macs(info, c_in[1], c_out[1]))
            reason = info.reason
            if info.kind == "frozen":
                status = "skipped"
            else:
                status = "pruned" if (c_in[0] != c_in[1] or c_out[0] != c_out[1]) else "kept"
                if is_producer(op) and c_out[0] == c_out[1]:
                    group = graph.groups[graph.group_of[info.out_layouts[0].segments[0][0]]]
                    reason = f"output channels kept: {group.frozen}" if group.frozen else None
            row = LayerPlan(op.name, type(op).__name__, c_in, c_out, (p0, p1), macs, status, reason)
            seen[id(op)] = row
            layers.append(row)
        groups = [
            GroupPlan(
                g.id,
                g.size,
                len(kept[g.spaces[0]]),
                g.producers,
                g.frozen,
                g.importance_source,
                kept[g.spaces[0]].tolist(),
            )
            for g in graph.groups
            if g.producers
        ]
        plan = ChannelPlan(
            ratio,
            round_to,
            self.importance_name,
            layers,
            groups,
            dict(graph.skipped),
            list(self.notes),
        )
        if any(x.macs[0] is None for x in layers):
            names = [x.name for x in layers if x.macs[0] is None]
            plan.notes.append(f"MACs unknown (dynamic spatial size) for {names}; counted as 0")
        return plan, indices

    def ratio_for(self, macs_reduction: float, round_to: int | None) -> float:
        """The smallest ratio (to 1e-4) whose plan removes at least ``macs_reduction`` of MACs."""
        if macs_reduction == 0:
            return 0.0
        hi = 0.9999
        best, _ = self.plan(hi, round_to)
        if best.macs_reduction < macs_reduction:
            frozen = [g.producers for g in self.graph.groups if g.frozen and g.producers]
            raise ValueError(
                f"macs_reduction={macs_reduction!r} cannot be reached: removing all but one "
                f"channel of every prunable group removes {best.macs_reduction:.1%} of the MACs. "
                f"Frozen groups (produced by): {frozen[:10]}"
            )
        lo = 0.0
        while hi - lo > 1e-4:
            mid = (lo + hi) / 2
            if self.plan(mid, round_to)[0].macs_reduction >= macs_reduction:
                hi = mid
            else:
                lo = mid
        return hi

    def global_counts(
        self, round_to: int | None, *, ratio=None, macs_reduction=None
    ) -> tuple[dict[int, int], float]:
        """Kept channels per group when all groups compete (``allocation="global"``).

        Every channel gets a LAMP score (Lee et al., ICLR 2021, applied to channels): its
        importance divided by the summed importance of the channels of its group that are at
        least as important. Scores are comparable across groups and grow as a group thins out
        (with equal importances the k-th last channel scores 1/k), so the widest groups lose
        channels first and a thin group's channels get dear. Channels are
        removed in increasing score order (``round_to`` at a time, the block's mean score) until
        ``macs_reduction`` of the MACs (counted exactly) or ``ratio`` of all prunable channels
        are gone; then the most important removed blocks that still fit under the MAC target are
        given back. Returns the counts and the fraction of prunable channels removed.
        """
        groups = [g for g in self.graph.groups if not g.frozen]
        counts = {g.id: g.size for g in self.graph.groups}
        total = sum(g.size for g in groups)
        if not groups or not (ratio or macs_reduction):
            return counts, 0.0
        if self._macs is None:
            self._macs = _MacModel(self.graph)
        macs_of = self._macs.saving
        lamp = {}  # per group, in removal order (least important first)
        for g in groups:
            asc = np.asarray(g.scores, dtype="float64")[self.order[g.id][::-1]]
            tail = np.cumsum(asc[::-1])[::-1]
            lamp[g.id] = np.divide(asc, tail, out=np.zeros_like(asc), where=tail > 0)
        size = {g.id: g.size for g in groups}
        floor = {g.id: min(g.size, round_to or 1) for g in groups}

        def block(gid) -> int:  # channels the group's next removal takes (0: none left)
            k = counts[gid]
            nxt = (k - 1) // round_to * round_to if round_to else k - 1
            return k - nxt if nxt >= floor[gid] else 0

        def score(gid, n, start=None) -> float:
            start = size[gid] - counts[gid] if start is None else start
            return float(lamp[gid][start : start + n].mean())

        macs0 = macs = self.plan(0.0, None)[0].macs_before
        target_macs = None if macs_reduction is None else macs0 * (1 - macs_reduction)
        target_removed = None if ratio is None else math.floor(ratio * total + 1e-9)
        removed, blocks = 0, {g.id: [] for g in groups}
        heap = [(score(g.id, block(g.id)), g.id) for g in groups if block(g.id)]
        heapq.heapify(heap)  # a group's score only changes when the group itself shrinks
        while (macs > target_macs) if target_macs is not None else (removed < target_removed):
            if not heap:
                frozen = [g.producers for g in self.graph.groups if g.frozen and g.producers]
                raise ValueError(
                    f"macs_reduction={macs_reduction!r} cannot be reached: keeping "
                    f"{round_to or 1} channel(s) of every prunable group (all of a smaller "
                    f"group) removes {1 - macs / macs0:.1%} of the MACs. Frozen groups "
                    f"(produced by): {frozen[:10]}"
                )
            _, gid = heapq.heappop(heap)
            n = block(gid)
            macs -= macs_of(counts, gid, n)
            counts[gid] -= n
            removed += n
            blocks[gid].append(n)
            if block(gid):
                heapq.heappush(heap, (score(gid, block(gid)), gid))
        # The last block may overshoot the MAC target (by up to round_to channels of a wide
        # group): give back the most important removed blocks that still fit under it.
        while target_macs is not None:
            fits = []
            for gid, done in blocks.items():
                if done:
                    n = done[-1]
                    counts[gid] += n
                    added = macs_of(counts, gid, n)
                    counts[gid] -= n
                    if macs + added <= target_macs:
                        start = size[gid] - counts[gid] - n
                        fits.append((score(gid, n, start), gid, added))
            if not fits:
                break
            _, gid, added = max(fits)
            n = blocks[gid].pop()
            counts[gid] += n
            removed -= n
            macs += added
        return counts, removed / total


# -- building -----------------------------------------------------------------------------------
def _slice(op, info, in_idx, out_idx) -> list[np.ndarray]:
    """The op's weights with only the kept input/output channels."""
    c_in = info.in_layouts[0].channels if info.in_layouts else 0
    new = []
    for w, v in zip(op.weights, op.get_weights()):
        roles = weight_roles(op, w, c_in)
        for axis, role in roles.items():
            if role == "in":
                idx = in_idx
            elif role == "out":
                idx = out_idx
            else:  # in_m: separable pointwise rows c * m + j
                m = op.depth_multiplier
                idx = (in_idx[:, None] * m + np.arange(m)[None, :]).reshape(-1)
            v = np.take(v, idx, axis=axis)
        new.append(v)
    return new


class _Narrow(GraphRewrite):
    """Rebuilds the model with the plan's kept channels: narrower producers, sliced weights."""

    def __init__(self, model, planner: _Planner, indices: dict):
        super().__init__(model, "prune_channels()")
        self.infos = {id(info.node): info for info in planner.graph.nodes}
        self.indices = indices
        self.node = None

    def on_node(self, node, args, kwargs):
        self.node = node  # new_layer/finish run for this node's op
        return self.call(node.operation, args, kwargs)

    def new_layer(self, op):
        info = self.infos[id(self.node)]
        if info.kind != "producer" or not isinstance(op, keras.layers.Layer):
            return copy_layer(op)
        config = op.get_config()
        _, out_idx = self.indices[id(self.node)]
        config[spec_of(op).width] = len(out_idx[0])
        return copy_layer(op, config)

    def finish(self, op, new) -> None:
        info = self.infos[id(self.node)]
        if info.kind == "frozen" or not isinstance(op, keras.layers.Layer) or not op.weights:
            copy_weights(op, new)
            return
        in_idx, out_idx = self.indices[id(self.node)]
        new.set_weights(_slice(op, info, in_idx[0], out_idx[0]))


# -- public API ---------------------------------------------------------------------------------
def prune_channels(
    model,
    ratio: float | None = None,
    *,
    macs_reduction: float | None = None,
    importance: str | Callable = "l1",
    round_to: int | None = None,
    allocation: str = "uniform",
    filters: str | Sequence[str] | Callable | None = None,
    dry_run: bool = False,
):
    """Removes whole channels (filters / units) and builds a smaller model with the kept weights.

    Channels that must stay aligned are pruned together: a Conv/Dense's output channels with the
    BatchNorm, activation, pooling and DepthwiseConv that follow and the input channels of the
    next layers; all inputs of a residual ``Add`` (and Multiply, ...); the inputs of a
    ``Concatenate`` at their offsets; a ``Flatten`` feeding a Dense (the Dense's rows for every
    spatial position). The model's outputs, its inputs and layers tfopt cannot see through are
    never pruned: those layers are left whole and named in ``plan.skipped`` with the reason.

    Args:
        model: a functional or Sequential Keras 3 model (channels-last). It is not modified.
        ratio: the fraction of channels removed from every prunable group: a group of ``C``
            coupled channels keeps ``C - floor(ratio * C)`` (then rounded up to ``round_to``,
            at least 1). Because a conv's MACs scale with its input and output channels, MACs
            drop by roughly ``1 - (1 - ratio)**2``. Give ``ratio`` or ``macs_reduction``.
            (With ``allocation="global"``: the fraction of all prunable channels.)
            Defaults to None.
        macs_reduction: instead of ``ratio``, the fraction of the model's MACs to remove (e.g.
            0.5): the smallest ratio reaching it is found with `find_ratio` (with
            ``allocation="global"``, channels are removed until it is reached).
            Defaults to None.
        importance: how channels are ranked within a group: ``"l1"`` / ``"l2"`` norm of each
            producer's filter, summed over the group's producers; ``"bn_gamma"``: ``|gamma|`` of
            the BatchNorms on the group's channels (L1 where a group has none); or a
            ``callable(layer) -> scores`` called for every producer layer (Conv/Dense/
            SeparableConv) of a group and returning one score per output channel (summed).
            Defaults to "l1".
        round_to: keep channel counts multiples of this (e.g. 8 for SIMD / accelerators;
            16 suits XNNPack's float32 and int8 kernels on AVX-512 CPUs). Defaults to None.
        allocation: how the pruning is spread over the groups. ``"uniform"``: every group
            loses the same fraction ``ratio``. ``"global"``: all channels compete on a LAMP
            score (the channel's importance over the summed importance of its group's channels
            that are at least as important), which thins the widest groups first (often the
            late, parameter-heavy ones: more parameters go per MAC removed) without emptying
            any; ``ratio`` is then the fraction of all prunable channels removed, and
            ``macs_reduction`` is overshot by at most one channel (one ``round_to`` block) of
            one group, where ``"uniform"`` rounds every group at once and can overshoot it far.
            Defaults to "uniform".
        filters: which producer layers may lose output channels: a regex (searched in layer
            names), a list of regexes, or a ``callable(layer) -> bool``. A group is pruned only
            if all its producers are selected. Defaults to None (all layers).
        dry_run: only return the plan; build nothing (the returned model is None).
            Defaults to False.

    Returns:
        ``(new_model, plan)``: a new functional ``keras.Model`` (uncompiled; None if
        ``dry_run``) with the same inputs and output shapes, and a `ChannelPlan` (per layer:
        channels, params and MACs before/after; ``str(plan)`` prints a table).

    Raises:
        TypeError: ``model`` is not a Keras 3 functional/Sequential model, or bad ``filters``.
        ValueError: ``ratio``/``macs_reduction`` outside [0, 1), both or neither given, an
            unknown ``importance`` or ``allocation``, a bad ``round_to``, or an unreachable
            ``macs_reduction``.

    Example:
        >>> small, plan = tfopt.prune.prune_channels(model, 0.5, round_to=8)
        >>> fast, plan = tfopt.prune.prune_channels(
        ...     model, macs_reduction=0.5, allocation="global", round_to=16)
        >>> print(plan)                     # per-layer channels / params / MACs before -> after
        >>> _, plan = tfopt.prune.prune_channels(model, macs_reduction=0.5, dry_run=True)
    """
    check_model(model)
    if (ratio is None) == (macs_reduction is None):
        raise ValueError(
            "Give exactly one of ratio= or macs_reduction=. Received: "
            f"ratio={ratio!r}, macs_reduction={macs_reduction!r}"
        )
    if ratio is not None:
        ratio = _check_ratio(ratio)
    else:
        macs_reduction = _check_ratio(macs_reduction, "macs_reduction")
    round_to = _check_round_to(round_to)
    allocation = _check_allocation(allocation)
    planner = _Planner(model, importance, filters)
    counts = None
    if allocation == "global":
        counts, ratio = planner.global_counts(round_to, ratio=ratio, macs_reduction=macs_reduction)
    elif ratio is None:
        ratio = planner.ratio_for(macs_reduction, round_to)
    plan, indices = planner.plan(ratio, round_to, counts)
    plan.allocation = allocation
    if dry_run:
        return None, plan
    return _Narrow(model, planner, indices).run(), plan


def find_ratio(
    model,
    macs_reduction: float,
    *,
    importance: str | Callable = "l1",
    round_to: int | None = None,
    filters: str | Sequence[str] | Callable | None = None,
) -> float:
    """Finds the smallest ``ratio`` for which `prune_channels` removes ``macs_reduction`` of MACs.

    Args:
        model: a functional or Sequential Keras 3 model.
        macs_reduction: fraction of the MACs to remove, in [0, 1).
        importance: as in `prune_channels`. Defaults to "l1".
        round_to: as in `prune_channels`. Defaults to None.
        filters: as in `prune_channels`. Defaults to None.

    Returns:
        The ratio (a float in [0, 1)), found by bisection on the plan (nothing is built).

    Raises:
        ValueError: ``macs_reduction`` outside [0, 1) or not reachable.

    Example:
        >>> r = tfopt.prune.find_ratio(model, 0.5)
        >>> small, plan = tfopt.prune.prune_channels(model, r)
    """
    check_model(model)
    macs_reduction = _check_ratio(macs_reduction, "macs_reduction")
    return _Planner(model, importance, filters).ratio_for(macs_reduction, _check_round_to(round_to))


def prune_channels_iterative(
    model,
    train=None,
    *,
    ratio: float | None = None,
    macs_reduction: float | None = None,
    steps: int = 3,
    epochs_per_step: int = 2,
    learning_rate: float = 5e-4,
    importance: str | Callable = "l1",
    round_to: int | None = None,
    allocation: str = "uniform",
    filters: str | Sequence[str] | Callable | None = None,
    validation_data=None,
    batch_size: int = 64,
    loss=None,
    fit: Callable | None = None,
    verbose: int = 0,
):
    """Prunes channels in ``steps`` rounds, fine-tuning after each: prune, fit, prune, fit, ...

    With ``ratio``, every step removes ``1 - (1 - ratio) ** (1 / steps)`` of the current
    channels of each group (of all channels with ``allocation="global"``), so that after all
    steps about ``ratio`` of the original channels are gone (exact up to the per-step rounding).
    With ``macs_reduction``, step ``k`` (1-based) prunes until the model has
    ``macs0 * (1 - macs_reduction * k / steps)`` MACs (``macs0``: the original model's), so the
    MACs fall linearly to the target.

    Args:
        model: a functional or Sequential Keras 3 model (not modified).
        train: ``(x, y)`` training data for the default fine-tuning. Defaults to None (then
            ``fit`` is required).
        ratio: total fraction of channels removed per group (see `prune_channels`).
            Defaults to None.
        macs_reduction: total fraction of MACs to remove instead. Defaults to None.
        steps: pruning rounds. Defaults to 3.
        epochs_per_step: fine-tuning epochs after each round. Defaults to 2.
        learning_rate: Adam learning rate for fine-tuning. Defaults to 5e-4.
        importance: as in `prune_channels`. Defaults to "l1".
        round_to: as in `prune_channels`. Defaults to None.
        allocation: as in `prune_channels`. Defaults to "uniform".
        filters: as in `prune_channels` (layer names survive pruning). Defaults to None.
        validation_data: ``(x, y)`` passed to ``fit``. Defaults to None.
        batch_size: fine-tuning batch size. Defaults to 64.
        loss: Keras loss. Defaults to None (sparse categorical cross-entropy, from logits unless
            the model outputs probabilities).
        fit: ``callable(model, step) -> None`` that compiles and fine-tunes ``model`` in place,
            used instead of the default Adam fit (e.g. the recipe step's ``ctx.fit``).
            Defaults to None.
        verbose: Keras fit verbosity. Defaults to 0.

    Returns:
        ``(pruned_model, plans)``: the fine-tuned model and the `ChannelPlan` of every step.

    Raises:
        ValueError: bad ``steps``/``epochs_per_step``/ratios, or neither ``train`` nor ``fit``.

    Example:
        >>> small, plans = tfopt.prune.prune_channels_iterative(
        ...     model, (x, y), macs_reduction=0.5, steps=2, epochs_per_step=3)
    """
    check_model(model)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1. Received: steps={steps!r}")
    if (
        isinstance(epochs_per_step, bool)
        or not isinstance(epochs_per_step, int)
        or epochs_per_step < 0
    ):
        raise ValueError(
            f"epochs_per_step must be an int >= 0. Received: epochs_per_step={epochs_per_step!r}"
        )
    if (ratio is None) == (macs_reduction is None):
        raise ValueError(
            "Give exactly one of ratio= or macs_reduction=. Received: "
            f"ratio={ratio!r}, macs_reduction={macs_reduction!r}"
        )
    if ratio is not None:
        _check_ratio(ratio)
    else:
        _check_ratio(macs_reduction, "macs_reduction")
    _check_allocation(allocation)
    if fit is None and train is None:
        raise ValueError(
            "prune_channels_iterative needs train=(x, y) or a fit=callable(model, step)"
        )
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0. Received: learning_rate={learning_rate!r}")

    def default_fit(m, step):
        from tfopt._training import compile_classifier, fit_arrays

        compile_classifier(m, learning_rate, loss=loss)
        if epochs_per_step:
            fit_arrays(
                m,
                *train,
                validation_data=validation_data,
                epochs=epochs_per_step,
                batch_size=batch_size,
                verbose=verbose,
            )

    fit = fit or default_fit
    plans = []
    current = model
    macs0 = None
    for k in range(1, steps + 1):
        kwargs = dict(
            importance=importance, round_to=round_to, allocation=allocation, filters=filters
        )
        if ratio is not None:
            step_ratio = 1.0 - (1.0 - ratio) ** (1.0 / steps)
            current, plan = prune_channels(current, step_ratio, **kwargs)
        else:
            if macs0 is None:
                macs0 = prune_channels(current, 0.0, dry_run=True, **kwargs)[1].macs_before
            _, now = prune_channels(current, 0.0, dry_run=True, **kwargs)
            target = macs0 * (1.0 - macs_reduction * k / steps)
            step_red = max(0.0, 1.0 - target / now.macs_before) if now.macs_before else 0.0
            step_red = min(step_red, 0.9999)
            current, plan = prune_channels(current, macs_reduction=step_red, **kwargs)
        plans.append(plan)
        fit(current, k)
    return current, plans
