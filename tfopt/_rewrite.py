"""The one model rewriter every technique uses: copy a model while replacing chosen layers.

A technique (prune, cluster, qat, prune_channels) supplies only *how to replace one layer*; this
module owns everything else, so that every technique treats models the same way:

- **selection** (`layer_filter`): Keras's ``Model.quantize(filters=)`` rule: a regex searched in
  the layer name, a list of regexes (any matches), or a callable ``layer -> bool``.
- **copy policy** (`copy_layer`, `copy_model`; `clone`: a whole model, the one copier that
  tune, distill and transfer use): the user's model is only read. Every layer of the
  result is a new object; a layer that cannot be copied is a `RewriteError` naming it, never a
  layer shared with the user's model (fitting the copy would change the original).
- **graph walk** (`GraphRewrite`): Sequential and functional models, with keras.ops nodes
  (``x + y``, ``x * 3.0``), nested models, shared layers, several inputs and outputs, rebuilt node
  by node. Techniques that rewrite more than single layers (QAT inserts activation ranges and
  folds BatchNorm) subclass it and override `GraphRewrite.on_node`.
- **subclassed models** (`sublayer_slots`, `set_slot`): layers held in attributes or lists of a
  copy made with ``from_config(get_config())``.
- **one report** (`Report`): which layers were changed and which were skipped, and why.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tfopt._backend import import_keras
from tfopt.errors import RewriteError

keras = import_keras()
tree = keras.tree

Filters = str | Sequence[str] | Callable[[Any], bool] | None


def _qualname(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


# -- selection ----------------------------------------------------------------------------------
def layer_filter(filters: Filters) -> Callable[[Any], bool]:
    """Returns ``layer -> bool`` for Keras's ``filters`` rule (as in ``Model.quantize``).

    Args:
        filters: None (every layer), a regex searched in the layer name (``re.search``), a list or
            tuple of regexes (a layer matches if any does), or a callable ``layer -> bool``.

    Raises:
        TypeError: ``filters`` is of another type, or a list holds something else than strings.
        ValueError: a regex does not compile.

    Example:
        >>> select = layer_filter(["conv", "^fc$"])   # every layer with "conv" in its name, and fc
    """
    if filters is None:
        return lambda layer: True
    if isinstance(filters, str):
        patterns = [filters]
    elif isinstance(filters, list | tuple) and all(isinstance(f, str) for f in filters):
        patterns = list(filters)
    elif callable(filters):
        return lambda layer: bool(filters(layer))
    else:
        raise TypeError(
            "filters must be a regex string, a list of regex strings or a callable layer -> bool. "
            f"Received: filters={filters!r} of type {_qualname(filters)}"
        )
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ValueError(
                f"filters holds {p!r}, which is not a valid regex ({e}). Received: filters={filters!r}"
            ) from None
    return lambda layer: any(c.search(layer.name) for c in compiled)


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Entry:
    """One layer in a `Report`: ``status`` is "changed" (``note`` says how) or "skipped" (why)."""

    layer: str
    class_name: str
    status: str
    note: str = ""


@dataclass
class Report:
    """What a technique did to each layer with weights: changed (how) or skipped (why).

    Every technique returns its model with this report as ``model.tfopt_report`` (also under its
    historical name: ``pruning_report``, ``cluster_report``, ``qat_report``; ``prune_channels``
    returns it in ``plan.report``). ``to_dict`` / ``from_dict`` make it a JSON record.

    Attributes:
        technique: "prune", "cluster", "qat" or "prune_channels".
        entries: one `Entry` per layer, in model order; nested layers are named ``outer/inner``.
        details: technique-specific facts (QAT: ``folded`` BatchNorms and activation ``ranges``;
            clustering: its settings).
    """

    technique: str
    entries: list[Entry] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def change(self, layer, note: str = "", *, name: str | None = None) -> None:
        self.entries.append(Entry(name or layer.name, type(layer).__name__, "changed", note))

    def skip(self, layer, reason: str, *, name: str | None = None) -> None:
        self.entries.append(Entry(name or layer.name, type(layer).__name__, "skipped", reason))

    def undo(self, name: str) -> None:
        """Drops the last entry for ``name`` (a replacement that failed after it was recorded)."""
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i].layer == name:
                del self.entries[i]
                return

    @property
    def changed(self) -> dict[str, str]:
        """``{layer name: what was done}`` for the layers the technique changed."""
        return {e.layer: e.note for e in self.entries if e.status == "changed"}

    @property
    def skipped(self) -> dict[str, str]:
        """``{layer name: reason}`` for the layers with weights that were left as they were."""
        return {e.layer: e.note for e in self.entries if e.status == "skipped"}

    def merge(self, other: Report, prefix: str) -> None:
        """Adds a nested model's report with its layers named ``prefix/layer``."""
        for e in other.entries:
            self.entries.append(Entry(f"{prefix}/{e.layer}", e.class_name, e.status, e.note))
        for key, value in other.details.items():
            if isinstance(value, dict):
                mine = self.details.setdefault(key, {})
                mine.update({f"{prefix}/{k}": f"{prefix}/{v}" for k, v in value.items()})
            elif isinstance(value, list):
                self.details.setdefault(key, []).extend(f"{prefix}/{v}" for v in value)

    def to_dict(self) -> dict:
        return {
            "technique": self.technique,
            "changed": self.changed,
            "skipped": self.skipped,
            "entries": [asdict(e) for e in self.entries],
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        return cls(d["technique"], [Entry(**e) for e in d["entries"]], dict(d.get("details", {})))

    def __str__(self) -> str:
        head = f"{self.technique}: changed {len(self.changed)} layers, skipped {len(self.skipped)}"
        counts = [f"{len(v)} {k}" for k, v in self.details.items() if isinstance(v, dict | list)]
        lines = [head + (f" ({', '.join(counts)})" if counts else "")]
        for e in self.entries:
            mark = "+" if e.status == "changed" else "-"
            note = f": {e.note}" if e.note else ""
            lines.append(f"  {mark} {e.layer} ({e.class_name}){note}")
        return "\n".join(lines)

    summary = __str__


def attach_report(model, report: Report, legacy_name: str | None = None):
    """Sets ``model.tfopt_report`` (and its historical alias) and returns ``model``."""
    model.tfopt_report = report
    if legacy_name:
        setattr(model, legacy_name, report)
    return model


# -- copy policy --------------------------------------------------------------------------------
def copy_layer(layer, config: dict | None = None, cls: type | None = None):
    """Returns a new, unbuilt layer (or keras.ops operation) like ``layer``; never ``layer`` itself.

    The copy comes from ``from_config(config or get_config())``; without a config round trip a
    ``copy.deepcopy`` is tried. Weights are not copied (see `copy_weights`). ``cls`` builds another
    class from the layer's config (e.g. a quantized variant).

    Raises:
        RewriteError: neither works; the message names the layer and what to add.
    """
    try:
        return (cls or type(layer)).from_config(
            config if config is not None else layer.get_config()
        )
    except Exception as config_error:
        if config is not None:
            raise RewriteError(
                f"Cannot rebuild layer {layer.name!r} ({_qualname(layer)}) from a changed config: "
                f"{type(config_error).__name__}: {config_error}"
            ) from config_error
        try:
            return copy.deepcopy(layer)
        except Exception:
            raise RewriteError(
                f"Cannot copy layer {layer.name!r} ({_qualname(layer)}): get_config/from_config "
                f"failed ({type(config_error).__name__}: {config_error}) and so did copy.deepcopy. "
                "tfopt never shares a layer with your model (training the copy would change it): "
                "give the layer a get_config() that returns its __init__ arguments."
            ) from config_error


def copy_weights(src, dst) -> None:
    """Copies ``src``'s weights into the built layer ``dst`` (a clear error if they differ)."""
    if src is dst or not isinstance(src, keras.layers.Layer) or not src.weights:
        return
    try:
        dst.set_weights(src.get_weights())
    except Exception as e:
        raise RewriteError(
            f"The copy of layer {src.name!r} ({_qualname(src)}) has other weights than the "
            f"layer ({e}): its get_config() must hold every argument that shapes its weights."
        ) from e


def is_graph_model(model) -> bool:
    """True for Sequential and functional models (a graph of layers tfopt can walk)."""
    from keras.src.models.functional import Functional

    return isinstance(model, keras.Sequential | Functional)


def graph_of(model, action: str):
    """The functional graph of a Sequential or functional ``model``; None for a subclassed one.

    Raises:
        RewriteError: a Sequential model that is not built (it has no graph yet).
    """
    if isinstance(model, keras.Sequential):
        func = getattr(model, "_functional", None)
        if func is None:
            raise RewriteError(
                f"The Sequential model {model.name!r} is not built: give it a keras.Input(...) "
                f"first layer or call model.build(input_shape) before {action}."
            )
        return func
    return model if is_graph_model(model) else None


def copy_model(model, action: str, *, weights: bool = True):
    """A built copy of a subclassed ``model`` (with its weights): ``from_config(get_config())``.

    Raises:
        RewriteError: the model is not built, has no config round trip, or its copy has other
            weights; the message says what to add.
    """
    if not model.built:
        raise RewriteError(
            f"The model {model.name!r} ({_qualname(model)}) is not built: call it on a batch (or "
            f"model.build(input_shape)) before {action}."
        )
    try:
        new = type(model).from_config(model.get_config())
    except Exception as e:
        raise RewriteError(
            f"{action} copies a subclassed model with from_config(get_config()) so that yours is "
            f"not changed, and {type(model).__name__} does not support that ({type(e).__name__}: "
            f"{e}). Implement get_config(), or build the model with the functional API."
        ) from None
    build_config = model.get_build_config()
    if build_config:
        new.build_from_config(build_config)
        shape = build_config.get("input_shape")
        if not new.built and shape is not None:  # a model without build(): call it once
            new(keras.ops.zeros([1 if d is None else d for d in (1, *shape[1:])]))
    if not weights:
        return new
    if len(new.weights) != len(model.weights):
        raise RewriteError(
            f"Cannot copy the subclassed model {type(model).__name__!r}: its copy has "
            f"{len(new.weights)} weights, the model {len(model.weights)}. Build the model (call it "
            "on data) and make get_config() hold every argument that shapes its layers."
        )
    try:
        new.set_weights(model.get_weights())
    except ValueError as e:
        raise RewriteError(
            f"{type(model).__name__}.from_config(model.get_config()) builds a model with other "
            f"weights than the model ({e}); get_config() must hold every argument that shapes "
            "the layers."
        ) from None
    return new


# -- graph models -------------------------------------------------------------------------------
class GraphRewrite:
    """Rebuilds a Sequential or functional model node by node into a new functional model.

    Subclasses override the hooks: `new_layer` (what replaces a layer; default: a copy),
    `finish` (after the replacement is built: copy weights), `on_input`, `on_node` and
    `on_outputs`. Shared layers stay shared (one replacement per original layer), keras.ops nodes
    are copied, nested models are rewritten by `nested`.
    """

    def __init__(self, model, action: str):
        func = graph_of(model, action)
        if func is None:
            raise TypeError(f"{action} needs a Sequential or functional model. Received: {model!r}")
        self.model, self.func, self.action = model, func, action
        self.nodes = [
            n
            for depth in sorted(func._nodes_by_depth, reverse=True)
            for n in func._nodes_by_depth[depth]
        ]
        self.consumers: dict[int, list] = {}
        self.calls: dict[int, int] = {}
        for node in self.nodes:
            if node.is_input:
                continue
            self.calls[id(node.operation)] = self.calls.get(id(node.operation), 0) + 1
            for t in node.input_tensors:
                self.consumers.setdefault(id(t), []).append(node)
        self.output_ids = {id(t) for t in func.outputs}
        self.tensors: dict[int, Any] = {}
        self.layers: dict[int, Any] = {}  # id(original op) -> its replacement
        self.skip_nodes: set[int] = set()

    # hooks
    def new_layer(self, op):
        return copy_layer(op)

    def finish(self, op, new) -> None:
        copy_weights(op, new)

    def nested(self, model):
        """The replacement of a nested model (default: the same rewrite, recursively)."""
        return type(self)(model, self.action).run() if is_graph_model(model) else None

    def nested_subclassed(self, wrapper):
        """The replacement of a `RewrittenSubclassModel` (default: a copy of it)."""
        return None

    def on_input(self, t, x):
        return x

    def on_node(self, node, args, kwargs):
        return self.call(node.operation, args, kwargs)

    def on_outputs(self, outputs: list) -> list:
        return outputs

    # machinery
    def sole_consumer(self, t):
        users = self.consumers.get(id(t), [])
        return users[0] if len(users) == 1 and id(t) not in self.output_ids else None

    def replacement(self, op):
        """The new op standing for ``op`` (made on first use) and whether it was just made."""
        if id(op) in self.layers:
            return self.layers[id(op)], False
        new = None
        if isinstance(op, keras.Model):
            new = self.nested(op)
        elif isinstance(op, RewrittenSubclassModel):
            new = self.nested_subclassed(op)
        if new is None:
            new = self.new_layer(op)
        elif isinstance(op, keras.Model | RewrittenSubclassModel):
            self.layers[id(op)] = new
            return new, False  # a rewritten nested model carries its own weights
        self.layers[id(op)] = new
        return new, True

    def call(self, op, args, kwargs):
        new, first = self.replacement(op)
        outputs = new(*args, **kwargs)
        if first:
            self.finish(op, new)
        return outputs

    def store(self, node, outputs) -> None:
        for t, y in zip(node.outputs, tree.flatten(outputs)):
            self.tensors[id(t)] = y

    def run(self, name: str | None = None):
        new_inputs = []
        for t in self.func.inputs:
            layer = t._keras_history.operation
            x = keras.Input(batch_shape=t.shape, dtype=t.dtype, name=layer.name)
            new_inputs.append(x)
            self.tensors[id(t)] = self.on_input(t, x)
        for node in self.nodes:
            if node.is_input or id(node) in self.skip_nodes:
                continue
            if any(id(x) not in self.tensors for x in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(self.tensors)
            outputs = self.on_node(node, args, kwargs)
            if outputs is not None:  # None: on_node stored its outputs itself
                self.store(node, outputs)
        outs = self.on_outputs([self.tensors[id(t)] for t in self.func.outputs])
        out_struct = getattr(self.func, "_outputs_struct", None)
        in_struct = getattr(self.func, "_inputs_struct", None)
        outputs = tree.pack_sequence_as(out_struct, outs) if out_struct is not None else outs
        inputs = (
            tree.pack_sequence_as(in_struct, new_inputs) if in_struct is not None else new_inputs
        )
        return keras.Model(inputs, outputs, name=name or self.model.name)


# -- subclassed models --------------------------------------------------------------------------
def sublayer_slots(parent):
    """Yields ``(attr, index, layer)`` for each tracked sublayer held in an attribute of ``parent``.

    ``index`` is None for a plain attribute and the position for a list or tuple attribute.
    Keras's own bookkeeping list (``_layers``) is skipped: it holds the same objects.
    """
    tracked = {id(x) for x in getattr(parent, "_layers", [])}
    for attr, value in list(vars(parent).items()):
        if attr == "_layers":
            continue
        items = value if isinstance(value, list | tuple) else [value]
        for i, layer in enumerate(items):
            if isinstance(layer, keras.layers.Layer) and id(layer) in tracked:
                yield attr, (i if isinstance(value, list | tuple) else None), layer


def slot(parent, attr, index):
    value = getattr(parent, attr)
    return value if index is None else value[index]


def set_slot(parent, attr, index, new) -> None:
    """Puts ``new`` in ``parent.attr`` (or ``parent.attr[index]``) in place of the layer there.

    Keras locks tracking after build, so the tracker is unlocked for the assignment.
    """
    old_value = getattr(parent, attr)
    if index is None:
        old, new_value = old_value, new
    else:
        items = list(old_value)
        old, items[index] = items[index], new
        new_value = tuple(items) if isinstance(old_value, tuple) else items
    tracker = getattr(parent, "_tracker", None)
    locked = bool(getattr(tracker, "locked", False))
    if tracker is not None:
        tracker.unlock()
    try:
        setattr(parent, attr, new_value)
    finally:
        if tracker is not None and locked:
            tracker.lock()
    layers = getattr(parent, "_layers", None)
    if layers is not None:  # the replacement takes the old layer's place (weight order kept)
        at = next((i for i, x in enumerate(layers) if x is old), len(layers))
        layers[:] = (
            [x for x in layers[:at] if x is not new]
            + [new]
            + [x for x in layers[at + 1 :] if x is not new]
        )


def is_leaf(layer) -> bool:
    """A layer that holds no sublayers (what techniques replace in subclassed models)."""
    return next(iter(sublayer_slots(layer)), None) is None


def build_like(new, built) -> None:
    """Builds ``new`` for the input shapes ``built`` (a built layer it replaces) was built with."""
    config = built.get_build_config()
    if not config:
        raise RewriteError(f"layer {built.name!r} ({_qualname(built)}) is not built")
    new.build_from_config(config)


# -- the per-layer rewrite ----------------------------------------------------------------------
class _LayerRewrite(GraphRewrite):
    def __init__(self, model, action, replace, finish):
        super().__init__(model, action)
        self.replace, self.finish_replaced = replace, finish
        self.replaced: set[int] = set()

    def nested(self, model):
        if is_graph_model(model):
            return rewrite(model, self.replace, finish=self.finish_replaced, action=self.action)
        return None

    def nested_subclassed(self, wrapper):
        swaps = _SubclassRewrite(wrapper.layer, self.replace, self.finish_replaced, self.action)
        return swaps.run(wrap=False)

    def new_layer(self, op):
        if isinstance(op, keras.layers.InputLayer):
            return copy_layer(op)
        new = self.replace(op) if isinstance(op, keras.layers.Layer) else None
        if new is None:
            return copy_layer(op)
        self.replaced.add(id(new))
        return new

    def finish(self, op, new) -> None:
        if id(new) in self.replaced:
            if self.finish_replaced is not None:
                self.finish_replaced(op, new)
        else:
            copy_weights(op, new)


def rewrite(
    model,
    replace: Callable[[Any], Any],
    *,
    finish: Callable[[Any, Any], None] | None = None,
    action: str = "rewrite",
):
    """Returns a copy of ``model`` in which ``replace`` decides the replacement of every layer.

    ``replace(layer)`` gets each layer of the user's model (read only) and returns a new, unbuilt
    layer to use instead, or None to keep a copy. Once the replacement is built,
    ``finish(layer, new)`` sets it up (e.g. copies the weights into a wrapper). Copies of kept
    layers get their weights copied. Sequential models stay Sequential; functional models are
    rebuilt node by node (keras.ops nodes, nested and shared layers, several inputs and outputs);
    in a subclassed model the leaf layers held in attributes or lists are replaced on a copy.

    Raises:
        RewriteError: a layer or a subclassed model that cannot be copied (named in the message).
    """
    if isinstance(model, keras.Sequential) and graph_of(model, action) is not None:
        return _rewrite_sequential(model, replace, finish, action)
    if is_graph_model(model):
        return _LayerRewrite(model, action, replace, finish).run()
    return _rewrite_subclassed(model, replace, finish, action)


def clone(model, *, action: str = "clone"):
    """A copy of ``model`` with layers of its own and the same weights: the one model copier
    (`rewrite` with nothing replaced).

    Works for Sequential, functional and subclassed models, and for models holding tfopt's
    wrappers (pruning, clustering, QAT: copied by their config, with their masks, centroids and
    ranges). Training the copy never changes ``model``.

    Raises:
        RewriteError: a layer or a subclassed model that cannot be copied (named in the message).

    Example:
        >>> student = clone(model)
    """
    return rewrite(model, lambda layer: None, action=action)


def _rewrite_sequential(model, replace, finish, action):
    func = graph_of(model, action)
    t = func.inputs[0]
    pairs = []
    for layer in model.layers:
        new = replace(layer)
        if new is None:
            if isinstance(layer, keras.Model):
                new = rewrite(layer, replace, finish=finish, action=action)
                pairs.append((layer, new, "nested"))
                continue
            new = copy_layer(layer)
            pairs.append((layer, new, "copy"))
        else:
            pairs.append((layer, new, "replaced"))
    layers = [keras.Input(batch_shape=t.shape, dtype=t.dtype), *[p[1] for p in pairs]]
    new_model = keras.Sequential(layers, name=model.name)
    for old, new, how in pairs:
        if how == "copy":
            copy_weights(old, new)
        elif how == "replaced" and finish is not None:
            finish(old, new)
    return new_model


def _own_variables(layer) -> list:
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def _rewrite_subclassed(model, replace, finish, action):
    return _SubclassRewrite(model, replace, finish, action).run(wrap=True)


class _SubclassRewrite:
    """Replaces the leaf layers of a subclassed model on a ``from_config`` copy and records each
    replacement (its attribute path and config), so that a `RewrittenSubclassModel` redoes them
    when a ``.keras`` file loads."""

    def __init__(self, model, replace, finish, action):
        self.model, self.replace, self.finish, self.action = model, replace, finish, action
        self.swaps: list[dict] = []

    def run(self, *, wrap: bool):
        # the copy is rebuilt from the model's config, so it holds plain layers where the model
        # may hold wrappers: weights are copied slot by slot, not model-wide
        new_model = copy_model(self.model, self.action, weights=False)
        self.visit(self.model, new_model, [])
        if not self.swaps:
            return new_model
        shape = (None, *new_model.get_build_config()["input_shape"][1:])
        # TF refuses a root name scope that starts with "_", and Keras names a class _Net "__net"
        if new_model.name.startswith("_"):
            new_model.name = new_model.name.lstrip("_") or "model"
        wrapper = RewrittenSubclassModel(
            new_model, swaps=self.swaps, model_input_shape=shape, name=f"{new_model.name}_copy"
        )
        if not wrap:
            return wrapper
        inputs = keras.Input(batch_shape=shape, name="input")
        return keras.Model(inputs, wrapper(inputs), name=self.model.name)

    def visit(self, original, parent, path) -> None:
        mine, theirs = _own_variables(original), _own_variables(parent)
        if len(mine) == len(theirs):
            for src, dst in zip(mine, theirs):
                dst.assign(src)
        for attr, index, built in list(sublayer_slots(parent)):
            source, step = slot(original, attr, index), [*path, [attr, index]]
            if is_graph_model(source):
                new = rewrite(source, self.replace, finish=self.finish, action=self.action)
                self.put(parent, attr, index, new, step)
                continue
            new = self.replace(source)
            if new is not None:
                build_like(new, built)
                if self.finish is not None:
                    self.finish(source, new)
                self.put(parent, attr, index, new, step, plain=type(new) is type(built))
            elif type(source) is not type(built):
                # an earlier replacement (a tfopt wrapper) that the config copy holds as the
                # plain layer: copied whole, and recorded so that the copy saves and loads
                new = copy_layer(source)
                build_like(new, source)
                copy_weights(source, new)
                self.put(parent, attr, index, new, step)
            elif is_leaf(source):
                copy_weights(source, built)
            else:
                self.visit(source, built, step)

    def put(self, parent, attr, index, new, step, plain: bool = False) -> None:
        set_slot(parent, attr, index, new)
        if not plain:  # a layer of the model's own class needs no record: its config has it
            self.swaps.append({"path": step, "layer": keras.saving.serialize_keras_object(new)})


def resolve_path(root, path):
    """The ``(parent, attr, index)`` that ``path`` (a list of ``[attr, index]`` steps) names."""
    parent = root
    for attr, index in path[:-1]:
        parent = slot(parent, attr, index)
    attr, index = path[-1]
    return parent, attr, index


def path_text(path) -> str:
    return ".".join(a if i is None else f"{a}[{i}]" for a, i in path)


@keras.saving.register_keras_serializable(package="tfopt")
class RewrittenSubclassModel(keras.layers.Wrapper):
    """Runs a copy of a subclassed model whose sublayers a technique replaced (pruning or
    clustering wrappers, ...), and saves to ``.keras``.

    A subclassed model's config rebuilds its plain layers, so the replacements are part of this
    wrapper's config (attribute paths such as ``[["block", None], ["conv", None]]`` and the
    replacement's own config) and are redone when it is built: the ``.keras`` file of a pruned
    or clustered subclassed model loads when the model class is registered with
    ``keras.saving.register_keras_serializable``. QAT's `QuantizedSubclassModel` subclasses it
    with its own swap records (`swap_record`, `redo`).

    Args:
        layer: the copied subclassed model, its replacements in place (or not yet, when loading).
        swaps: ``[{"path": [[attr, index or None], ...], "layer": serialized replacement}]``.
        model_input_shape: the model's input shape, batch dimension first.
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, layer, *, swaps, model_input_shape, **kwargs):
        super().__init__(layer, **kwargs)
        self.swaps = [
            {
                "path": [[str(a), None if i is None else int(i)] for a, i in s["path"]],
                **self.swap_record(s),
            }
            for s in swaps
        ]
        self.model_input_shape = tuple(model_input_shape)

    @staticmethod
    def swap_record(swap: dict) -> dict:
        """The JSON-able record of one swap, less its path (a subclass records its own)."""
        return {"layer": swap["layer"]}

    def redo(self, model, swap: dict) -> None:
        """Puts the replacement ``swap`` records in its place in ``model`` (built, loading)."""
        parent, attr, index = resolve_path(model, swap["path"])
        current = slot(parent, attr, index)
        if type(current).__name__ == swap["layer"]["class_name"]:
            return  # already in place (the copy a technique just made)
        new = keras.saving.deserialize_keras_object(swap["layer"])
        if not new.built:  # a serialized layer carries its build config: usually built
            build_like(new, current)
        set_slot(parent, attr, index, new)

    def needs_call(self, model) -> bool:
        """Whether ``model`` must be called once to build its sublayers before the swaps."""
        return not model.built

    def build(self, input_shape=None):
        model = self.layer
        if self.needs_call(model):  # calling the model builds every sublayer with its real shape
            model(keras.ops.zeros((1, *self.model_input_shape[1:])))
        for swap in self.swaps:
            self.redo(model, swap)
        self.built = True

    def swapped(self) -> dict:
        """The replacements by attribute path (``conv``, ``heads[1]``, ``block.conv``, ...)."""
        return {
            path_text(s["path"]): slot(*resolve_path(self.layer, s["path"])) for s in self.swaps
        }

    def call(self, x, training=None):
        return self.layer(x, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "swaps": self.swaps,
            "model_input_shape": list(self.model_input_shape),
        }
