"""The QAT copy of a subclassed model: its attribute layers swapped for `QuantizeWrapper`s."""

from __future__ import annotations

from tfopt._backend import import_keras
from tfopt._rewrite import RewrittenSubclassModel, path_text, resolve_path, set_slot, slot
from tfopt.quantize._attention import QuantizedMultiHeadAttention
from tfopt.quantize._layers import QuantizeWrapper

keras = import_keras()


def swap_in_wrapper(root, path, *, name, preserve_sparsity, quantize_input, clusters=None):
    """Wraps the built layer at ``path`` in a `QuantizeWrapper` and puts it in its place
    (``clusters``: ``(k, per_channel)`` of a kernel whose clusters are kept, or None)."""
    parent, attr, index = resolve_path(root, path)
    layer = slot(parent, attr, index)
    if isinstance(layer, QuantizeWrapper):
        return layer
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if shape is None:
        raise ValueError(f"layer {layer.name!r} at {path_text(path)} is not built")
    k, per_channel = clusters or (None, False)
    wrapper = QuantizeWrapper(
        layer,
        preserve_sparsity=preserve_sparsity,
        quantize_input=quantize_input,
        clusters=k,
        clusters_per_channel=per_channel,
        name=name,
    )
    wrapper.build(tuple(shape))
    set_slot(parent, attr, index, wrapper)
    return wrapper


def swap_in_attention(root, path, *, name):
    """Replaces the built ``MultiHeadAttention`` at ``path`` by a `QuantizedMultiHeadAttention`
    (same config and weights; its projections track their input ranges)."""
    parent, attr, index = resolve_path(root, path)
    layer = slot(parent, attr, index)
    if isinstance(layer, QuantizedMultiHeadAttention):
        return layer
    shapes = getattr(layer, "_build_shapes_dict", None)
    if not shapes:
        raise ValueError(f"layer {layer.name!r} at {path_text(path)} is not built")
    config = {**layer.get_config(), "name": name, "quantize_inputs": True}
    new = QuantizedMultiHeadAttention.from_config(config)
    new.build(**shapes)
    new.copy_projection_weights(layer)
    set_slot(parent, attr, index, new)
    return new


@keras.saving.register_keras_serializable(package="tfopt")
class QuantizedSubclassModel(RewrittenSubclassModel):
    """Runs a subclassed model whose sublayers were swapped for their QAT versions.

    Each quantizable layer sits in a `QuantizeWrapper` and each ``MultiHeadAttention`` is a
    `QuantizedMultiHeadAttention`, in the attribute that held the float layer. It is a
    `tfopt._rewrite.RewrittenSubclassModel` (the swaps are part of its config and are redone when
    it is built, so that ``.keras`` files of QAT copies of subclassed models load) whose swap
    records are QAT's own: the wrapper's options, which rebuild it around the float layer there.

    The model's ``call`` is Python that tfopt cannot see into, so a wrapper cannot know whether
    its input carries an int8 range (the model input, the output of another wrapper) or comes
    from float ops (a LayerNormalization, an average, ...). Each wrapper therefore tracks its
    input range itself (``quantize_input``; not for Embedding, whose input is integer ids) and
    applies it only to inputs that do not come straight out of an int8 range (see `is_int8`).

    Args:
        layer: the (copied) subclassed model.
        swaps: ``[{"path": [[attr, index or None], ...], "name": the new layer's name,
            "kind": "wrapper" or "attention", "quantize_input": bool, "clusters": [k,
            per_channel] or None}, ...]``: a
            `QuantizeWrapper` around the layer at ``path``, or a `QuantizedMultiHeadAttention`
            in place of the ``MultiHeadAttention`` there.
        model_input_shape: the model's input shape, batch dimension first.
        preserve_sparsity: passed to each `QuantizeWrapper`. Defaults to True.
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, layer, *, swaps, model_input_shape, preserve_sparsity=True, **kwargs):
        self.preserve_sparsity = bool(preserve_sparsity)
        super().__init__(layer, swaps=swaps, model_input_shape=model_input_shape, **kwargs)

    @staticmethod
    def swap_record(swap: dict) -> dict:
        return {
            "name": str(swap["name"]),
            "kind": str(swap.get("kind", "wrapper")),
            "quantize_input": bool(swap.get("quantize_input", False)),
            "clusters": None if swap.get("clusters") is None else list(swap["clusters"]),
        }

    def needs_call(self, model) -> bool:
        # the float layers to wrap must be built: calling the model builds them
        return not model.built or any(
            not getattr(slot(*resolve_path(model, s["path"])), "built", True) for s in self.swaps
        )

    def redo(self, model, swap: dict) -> None:
        if swap["kind"] == "attention":
            swap_in_attention(model, swap["path"], name=swap["name"])
            return
        swap_in_wrapper(
            model,
            swap["path"],
            name=swap["name"],
            preserve_sparsity=self.preserve_sparsity,
            quantize_input=swap["quantize_input"],
            clusters=swap.get("clusters"),
        )

    def wrappers(self) -> dict:
        """Returns the swapped-in layers by attribute path (``conv``, ``heads[1]``, ...)."""
        return self.swapped()

    def get_config(self):
        return {**super().get_config(), "preserve_sparsity": self.preserve_sparsity}
