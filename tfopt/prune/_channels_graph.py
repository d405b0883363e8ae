"""The channel dependency graph behind `tfopt.prune.prune_channels`.

Every tensor's last axis (its channels) is described by a `Layout`: a list of segments, each a
whole "channel space" created by one producer (Conv/Dense/SeparableConv output, a model input, or
the output of a layer tfopt cannot see through), repeated ``repeat`` times (a Flatten of a
``(spatial, C)`` tensor lays its ``spatial * C`` features out as ``repeat=spatial`` copies of the
``C`` channels). Layers that keep channels one to one (BatchNorm, activations, pooling, padding,
dropout, DepthwiseConv) pass the layout through; element-wise merges (Add, Multiply, ...) tie the
spaces of their inputs together (union-find); Concatenate lays its inputs' segments side by side.
A group is a set of tied spaces: the same channel indices are kept in every space of a group.
A group is frozen when any of its spaces reaches the model output, a layer tfopt cannot handle, a
model input or a producer the user excluded with ``filters``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tfopt import _measure as measure
from tfopt._backend import import_keras
from tfopt._layers import guard, spec_of, weight_axes
from tfopt._rewrite import graph_of

keras = import_keras()
L = keras.layers


class Unsupported(Exception):
    """A layer tfopt cannot prune through; the message is the reason shown in the plan."""


@dataclass(frozen=True)
class Layout:
    """How a tensor's last axis is made of channel spaces: ``segments`` repeated ``repeat`` times."""

    segments: tuple[tuple[int, int], ...]  # (space id, size)
    repeat: int = 1

    @property
    def width(self) -> int:
        return sum(size for _, size in self.segments)

    @property
    def channels(self) -> int:
        return self.width * self.repeat


@dataclass
class NodeInfo:
    """One call of an operation in the model graph, with the layouts of its inputs and outputs."""

    node: object
    op: object
    kind: str  # input | producer | tied | merge | concat | flatten | frozen
    in_layouts: list[Layout]
    out_layouts: list[Layout]
    in_shapes: list[tuple]
    out_shapes: list[tuple]
    reason: str | None = None


@dataclass
class Group:
    """Channel spaces tied together: one pruning decision (which indices to keep) for all."""

    id: int
    spaces: list[int]
    size: int
    producers: list[str]
    frozen: str | None = None
    scores: np.ndarray | None = None
    importance_source: str = ""


# Each layer's role in the channel graph (producer, tied, merge, concat, flatten), the config key
# of a producer's width and the per-layer checks are in its spec (tfopt._layers).


def _role(op) -> str | None:
    spec = spec_of(op)
    return None if spec is None else spec.channels


def is_producer(op) -> bool:
    return _role(op) == "producer"


def _is_layer(op) -> bool:
    return isinstance(op, L.Layer)


def _shape(t) -> tuple:
    return tuple(t.shape)


def _check_channels_last(op):
    fmt = getattr(op, "data_format", None)
    if fmt is not None and fmt != "channels_last":
        raise Unsupported(f"data_format={fmt!r} (only channels_last is supported)")


class Graph:
    """The analysed model: nodes in topological order, channel spaces, groups."""

    def __init__(self, model, *, prunable=None):
        self.model = model
        self.func = _functional(model)
        self.space_size: list[int] = []
        self.space_producer: list[str | None] = []
        self._parent: list[int] = []
        self._frozen: dict[int, str] = {}  # space -> reason (any space; resolved to roots later)
        self.layouts: dict[int, Layout] = {}  # id(KerasTensor) -> Layout
        self.nodes: list[NodeInfo] = []
        self.skipped: dict[str, str] = {}  # layer name -> why it is left whole
        self.prunable = prunable or (lambda layer: True)
        self._analyse()
        self.groups = self._make_groups()

    # -- union-find over channel spaces ---------------------------------------------------------
    def new_space(self, size: int, producer: str | None, frozen: str | None = None) -> int:
        sid = len(self.space_size)
        self.space_size.append(int(size))
        self.space_producer.append(producer)
        self._parent.append(sid)
        if frozen:
            self._frozen[sid] = frozen
        return sid

    def find(self, s: int) -> int:
        while self._parent[s] != s:
            self._parent[s] = self._parent[self._parent[s]]
            s = self._parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, layout: Layout, reason: str) -> None:
        for sid, _ in layout.segments:
            self._frozen.setdefault(sid, reason)

    def fresh(self, shape: tuple, producer: str | None, frozen: str | None = None) -> Layout:
        channels = shape[-1] if len(shape) > 1 else 1
        if channels is None:
            channels = 0
            frozen = frozen or "unknown channel count"
        return Layout(((self.new_space(channels, producer, frozen), int(channels)),))

    # -- analysis ------------------------------------------------------------------------------
    def _analyse(self) -> None:
        func = self.func
        calls: dict[int, int] = {}
        for depth in sorted(func._nodes_by_depth, reverse=True):
            for node in func._nodes_by_depth[depth]:
                calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for x in func.inputs:
            self.layouts[id(x)] = self.fresh(_shape(x), None, "model input")
        for depth in sorted(func._nodes_by_depth, reverse=True):
            for node in func._nodes_by_depth[depth]:
                if node.is_input:
                    continue
                self._visit(node, calls[id(node.operation)])
        for x in func.outputs:
            self.freeze(self.layouts[id(x)], "model output")

    def _visit(self, node, n_calls: int) -> None:
        op = node.operation
        ins = [self.layouts[id(t)] for t in node.input_tensors]
        in_shapes = [_shape(t) for t in node.input_tensors]
        out_shapes = [_shape(t) for t in node.outputs]
        info = NodeInfo(node, op, "frozen", ins, [], in_shapes, out_shapes)
        try:
            if n_calls > 1:
                raise Unsupported(f"layer is called {n_calls} times (shared weights)")
            info.kind, info.out_layouts = self._rule(op, node, ins, in_shapes, out_shapes)
        except Unsupported as e:
            info.kind, info.reason = "frozen", str(e)
            self.skipped[op.name] = str(e)
            for lay in ins:
                self.freeze(lay, f"feeds {op.name} ({type(op).__name__}), which is left whole")
            info.out_layouts = [
                self.fresh(s, op.name, f"comes from {op.name} ({type(op).__name__}), left whole")
                for s in out_shapes
            ]
        for t, lay in zip(node.outputs, info.out_layouts):
            self.layouts[id(t)] = lay
        self.nodes.append(info)

    def _rule(self, op, node, ins, in_shapes, out_shapes):
        spec, role = spec_of(op), _role(op)
        if not _is_layer(op):
            return self._op_rule(op, node, ins, in_shapes, out_shapes, role)
        if role is None:
            if isinstance(op, keras.Model):
                raise Unsupported("nested model")
            base = next((b.__name__ for b in type(op).__mro__[1:] if _role(b)), None)
            extra = f" (subclass of {base})" if base else ""
            raise Unsupported(f"layer type {type(op).__name__}{extra} is not supported")
        why = guard(op, spec)
        if why:
            raise Unsupported(why)
        if len(node.outputs) != 1:
            raise Unsupported("layer has several outputs")
        out_shape = out_shapes[0]
        if role == "merge":
            return "merge", [self._merge(op, ins, in_shapes, out_shapes)]
        if role == "concat":
            return "concat", [self._concat(op, ins, in_shapes, out_shape)]
        if len(ins) != 1:
            raise Unsupported(f"layer takes {len(ins)} tensor inputs")
        lay, in_shape = ins[0], in_shapes[0]
        _check_channels_last(op)
        if role == "flatten":
            spatial = in_shape[1:-1]
            if lay.repeat != 1 or any(d is None for d in spatial):
                raise Unsupported("Flatten of a tensor with unknown spatial size")
            return "flatten", [Layout(lay.segments, lay.repeat * int(np.prod(spatial, dtype=int)))]
        if role == "producer":
            if getattr(op, "groups", 1) != 1:
                raise Unsupported(f"grouped convolution (groups={op.groups})")
            if lay.channels != in_shape[-1]:
                raise Unsupported("input channel layout does not match the input shape")
            return "producer", [self.fresh(out_shape, op.name)]
        # "tied": channel i stays channel i; per-channel weights cannot follow a flattened tensor
        if lay.repeat != 1 and spec.weights:
            raise Unsupported("applied to a flattened tensor")
        why = spec.channel_check(op, in_shape) if spec.channel_check else None
        if why:
            raise Unsupported(why)
        if out_shape[-1] != in_shape[-1] and len(out_shape) > 1:
            raise Unsupported("changes the channel count")
        return "tied", [lay]

    def _op_rule(self, op, node, ins, in_shapes, out_shapes, role):
        """A keras.ops call recorded in the graph (``x + y``, ``x * 2.0``, ``relu6(x)``)."""
        name = type(op).__name__
        if role == "merge" and not node.arguments.kwargs:
            args = node.arguments.args
            if len(ins) == 2 and len(args) == 2:
                return "merge", [self._merge(op, ins, in_shapes, out_shapes)]
            scalar = [a for a in args if isinstance(a, int | float)]
            if len(ins) == 1 and len(args) == 2 and len(scalar) == 1:
                return "tied", [ins[0]]  # x * 2.0, x + 1.0: channel i stays channel i
        if role == "tied" and len(ins) == 1:
            others = [a for a in node.arguments.args[1:]] + list(node.arguments.kwargs.values())
            if all(isinstance(a, int | float | None) for a in others):
                return "tied", [ins[0]]
        raise Unsupported(f"operation {name} is not supported by channel pruning")

    def _merge(self, op, ins, in_shapes, out_shapes) -> Layout:
        if any(s[-1] != out_shapes[0][-1] for s in in_shapes):
            raise Unsupported("inputs broadcast along the channel axis")
        first = ins[0]
        for lay in ins[1:]:
            if lay.repeat != first.repeat or [s for _, s in lay.segments] != [
                s for _, s in first.segments
            ]:
                raise Unsupported("inputs have differently concatenated channels")
        for lay in ins[1:]:
            for (a, _), (b, _) in zip(first.segments, lay.segments):
                self.union(a, b)
        return first

    def _concat(self, op, ins, in_shapes, out_shape) -> Layout:
        rank = len(out_shape)
        if op.axis % rank != rank - 1:  # concatenation along a spatial axis ties the channels
            return self._merge(op, ins, in_shapes, [out_shape])
        if any(lay.repeat != 1 for lay in ins):
            raise Unsupported("concatenates flattened tensors")
        return Layout(tuple(seg for lay in ins for seg in lay.segments))

    # -- groups --------------------------------------------------------------------------------
    def _make_groups(self) -> list[Group]:
        for info in self.nodes:
            if info.kind == "producer" and not self.prunable(info.op):
                self.freeze(info.out_layouts[0], f"{info.op.name} excluded by filters")
        members: dict[int, list[int]] = {}
        for sid in range(len(self.space_size)):
            members.setdefault(self.find(sid), []).append(sid)
        groups = []
        for root, spaces in sorted(members.items()):
            frozen = next((self._frozen[s] for s in spaces if s in self._frozen), None)
            producers = [self.space_producer[s] for s in spaces if self.space_producer[s]]
            groups.append(Group(len(groups), spaces, self.space_size[root], producers, frozen))
        self.group_of = {s: g.id for g in groups for s in g.spaces}
        return groups


def _functional(model):
    func = graph_of(model, "pruning")
    if func is None:
        raise TypeError(
            f"prune_channels needs a functional or Sequential Keras model (a graph of layers). "
            f"Received a subclassed model: {type(model).__module__}.{type(model).__name__}"
        )
    return func


# -- per-layer weights, params and MACs -------------------------------------------------------
def weight_roles(op, variable, in_channels: int) -> dict[int, str]:
    """Which axes of ``variable`` (a weight of ``op``) follow the layer's input ("in", "in_m":
    ``c_in * depth_multiplier`` rows) or output ("out") channels, from the layer's spec."""
    w = weight_axes(op).get(id(variable))
    if w is None:
        return {}
    shape, roles = tuple(variable.shape), {}
    if w.in_axis is not None:
        axis = w.in_axis % len(shape)
        if w.in_multiplied:
            roles[axis] = "in_m"
        elif w.out_axis is not None or shape[axis] == in_channels:  # a shared PReLU axis stays
            roles[axis] = "in"
    if w.out_axis is not None:
        roles[w.out_axis % len(shape)] = "out"
    return roles


def layer_params(op, c_in_full: int, c_in: int, c_out: int) -> int:
    """Parameters of ``op`` with ``c_in`` input and ``c_out`` output channels.

    ``c_in_full`` is the layer's original input channel count (it tells a BatchNorm's
    per-channel weights from others).
    """
    total = 0
    for w in op.weights:
        shape = tuple(w.shape)
        new = list(shape)
        for axis, role in weight_roles(op, w, c_in_full).items():
            if role == "in":
                new[axis] = c_in
            elif role == "out":
                new[axis] = c_out
            else:  # in_m: separable pointwise rows
                new[axis] = c_in * op.depth_multiplier
        total += int(np.prod(new, dtype=np.int64))
    return total


def layer_macs(info: NodeInfo, c_in: int, c_out: int) -> int | None:
    """Multiply-accumulates of one call with ``c_in`` input and ``c_out`` output channels
    (`tfopt._measure.layer_macs`, the counter every part of tfopt uses)."""
    return measure.layer_macs(info.op, info.in_shapes, info.out_shapes, c_in=c_in, c_out=c_out)


def keep_count(size: int, ratio: float, round_to: int | None) -> int:
    """Channels kept in a group of ``size``: remove floor(ratio * size), round up to round_to."""
    keep = size - math.floor(ratio * size + 1e-9)
    if round_to:
        keep = math.ceil(keep / round_to) * round_to
    return max(1, min(size, keep))
