"""The QAT copy of a subclassed model: its attribute layers swapped for `QuantizeWrapper`s."""

from __future__ import annotations

import numpy as np

from tfopt._backend import import_keras
from tfopt._rewrite import set_slot, slot
from tfopt.quantize._attention import QuantizedMultiHeadAttention
from tfopt.quantize._layers import QuantizeWrapper

keras = import_keras()


def _resolve(root, path):
    """The ``(parent, attr, index)`` that ``path`` (a list of ``[attr, index]`` steps) names."""
    parent = root
    for attr, index in path[:-1]:
        value = getattr(parent, attr)
        parent = value if index is None else value[index]
    attr, index = path[-1]
    return parent, attr, index


def swap_in_wrapper(root, path, *, name, preserve_sparsity, quantize_input):
    """Wraps the built layer at ``path`` in a `QuantizeWrapper` and puts it in its place."""
    parent, attr, index = _resolve(root, path)
    layer = slot(parent, attr, index)
    if isinstance(layer, QuantizeWrapper):
        return layer
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if shape is None:
        raise ValueError(f"layer {layer.name!r} at {_path_text(path)} is not built")
    wrapper = QuantizeWrapper(
        layer, preserve_sparsity=preserve_sparsity, quantize_input=quantize_input, name=name
    )
    wrapper.build(tuple(shape))
    set_slot(parent, attr, index, wrapper)
    return wrapper


def swap_in_attention(root, path, *, name):
    """Replaces the built ``MultiHeadAttention`` at ``path`` by a `QuantizedMultiHeadAttention`
    (same config and weights; its projections track their input ranges)."""
    parent, attr, index = _resolve(root, path)
    layer = slot(parent, attr, index)
    if isinstance(layer, QuantizedMultiHeadAttention):
        return layer
    shapes = getattr(layer, "_build_shapes_dict", None)
    if not shapes:
        raise ValueError(f"layer {layer.name!r} at {_path_text(path)} is not built")
    config = {**layer.get_config(), "name": name, "quantize_inputs": True}
    new = QuantizedMultiHeadAttention.from_config(config)
    new.build(**shapes)
    new.copy_projection_weights(layer)
    set_slot(parent, attr, index, new)
    return new


def _path_text(path) -> str:
    return ".".join(a if i is None else f"{a}[{i}]" for a, i in path)


@keras.saving.register_keras_serializable(package="tfopt")
class QuantizedSubclassModel(keras.layers.Wrapper):
    """Runs a subclassed model whose sublayers were swapped for their QAT versions.

    Each quantizable layer sits in a `QuantizeWrapper` and each ``MultiHeadAttention`` is a
    `QuantizedMultiHeadAttention`, in the attribute that held the float layer.

    A subclassed model's config rebuilds its float layers, so the swaps are part of this wrapper's
    config (attribute paths such as ``[["heads", 1]]``) and are redone when it is built. That is
    what lets ``.keras`` files of QAT copies of subclassed models load: the model class must
    itself round-trip through ``get_config`` / ``from_config`` and be registered with
    ``keras.saving.register_keras_serializable`` (or passed in ``custom_objects``).

    The model's ``call`` is Python that tfopt cannot see into, so a wrapper cannot know whether
    its input carries an int8 range (the model input, the output of another wrapper) or comes
    from float ops (a LayerNormalization, an average, ...). Each wrapper therefore tracks its
    input range itself (``quantize_input``; not for Embedding, whose input is integer ids) and
    applies it only to inputs that do not come straight out of an int8 range (see `is_int8`).

    Args:
        layer: the (copied) subclassed model.
        swaps: ``[{"path": [[attr, index or None], ...], "name": the new layer's name,
            "kind": "wrapper" or "attention", "quantize_input": bool}, ...]``: a
            `QuantizeWrapper` around the layer at ``path``, or a `QuantizedMultiHeadAttention`
            in place of the ``MultiHeadAttention`` there.
        model_input_shape: the model's input shape, batch dimension first.
        preserve_sparsity: passed to each `QuantizeWrapper`. Defaults to True.
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(
        self, layer, *, swaps, model_input_shape, preserve_sparsity: bool = True, **kwargs
    ):
        super().__init__(layer, **kwargs)
        self.swaps = [
            {
                "path": [[str(a), None if i is None else int(i)] for a, i in s["path"]],
                "name": str(s["name"]),
                "kind": str(s.get("kind", "wrapper")),
                "quantize_input": bool(s.get("quantize_input", False)),
            }
            for s in swaps
        ]
        self.model_input_shape = tuple(model_input_shape)
        self.preserve_sparsity = bool(preserve_sparsity)

    def build(self, input_shape=None):
        model = self.layer
        if not model.built or any(
            not getattr(slot(*_resolve(model, s["path"])), "built", True) for s in self.swaps
        ):
            # calling the model builds every sublayer with its real input shape
            model(np.zeros((1, *self.model_input_shape[1:]), dtype="float32"))
        for s in self.swaps:
            if s["kind"] == "attention":
                swap_in_attention(model, s["path"], name=s["name"])
                continue
            swap_in_wrapper(
                model,
                s["path"],
                name=s["name"],
                preserve_sparsity=self.preserve_sparsity,
                quantize_input=s["quantize_input"],
            )
        self.built = True

    def wrappers(self) -> dict:
        """Returns the swapped-in layers by attribute path (``conv``, ``heads[1]``, ...)."""
        return {_path_text(s["path"]): slot(*_resolve(self.layer, s["path"])) for s in self.swaps}

    def call(self, x, training=None):
        return self.layer(x, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "swaps": self.swaps,
            "model_input_shape": list(self.model_input_shape),
            "preserve_sparsity": self.preserve_sparsity,
        }
