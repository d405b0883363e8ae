"""Where the model can give: a per-layer sensitivity pass, and the recipes it suggests.

Each layer with a kernel (but the output layer) is changed alone, in a copy of the float model, and
the copy is scored on a validation slice; the accuracy lost is that layer's sensitivity to:

* a channel cut: the lowest-L1 ``ratio`` of its output channels zeroed (kernel and bias), for
  each ratio of `CHANNEL_RATIOS`: what `prune_channels` removes, without rebuilding the model;
* magnitude sparsity: the smallest `SPARSITY` of its kernel zeroed;
* 4-bit weights: its kernel rounded to 15 symmetric levels per output channel.

`layer_plan` turns the losses into per-layer settings for a tolerance: each layer gets the largest
channel ratio, sparsity and bit width whose one-shot loss stays within it. The losses are measured
without fine-tuning, so they overstate what a fine-tuned candidate loses; they rank the layers,
and the tolerance sets how far down that ranking a recipe goes.
"""

from __future__ import annotations

import numpy as np

CHANNEL_RATIOS = (0.25, 0.5, 0.75)
SPARSITY = 0.8
# pruning a layer that holds < 5% of the kernel weights saves almost nothing (as `scope: large`)
LARGE_SHARE = 0.05
SLICE = 512  # validation samples the pass scores on (its resolution: 1 / SLICE)


def _accuracy(model, x, y) -> np.ndarray:
    logits = np.concatenate([np.asarray(model(x[i : i + 256], training=False))
                             for i in range(0, len(x), 256)])  # fmt: skip
    return logits.reshape(len(x), -1).argmax(axis=1) == y


def _kernel_layers(model) -> list:
    """Layers with a 2-D+ kernel, the output layers left out (their classes cannot be cut)."""
    outputs = {id(t) for t in model.outputs}
    return [
        layer
        for layer in model.layers
        if getattr(layer, "kernel", None) is not None
        and len(layer.kernel.shape) >= 2
        and id(layer.output) not in outputs
    ]


def _cut(kernel, bias, ratio):
    norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    drop = np.argsort(norms, kind="stable")[: int(ratio * kernel.shape[-1])]
    kernel = kernel.copy()
    kernel[..., drop] = 0.0
    if bias is not None:
        bias = bias.copy()
        bias[drop] = 0.0
    return kernel, bias


def _sparse(kernel, sparsity):
    k = int(sparsity * kernel.size)
    out = kernel.copy().reshape(-1)
    out[np.argsort(np.abs(out), kind="stable")[:k]] = 0.0
    return out.reshape(kernel.shape)


def _int4(kernel):
    scale = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0) / 7.0
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(kernel / scale), -7, 7) * scale


def layer_sensitivity(model, val, *, samples: int = SLICE) -> dict:
    """The accuracy each layer loses to a channel cut, sparsity and 4-bit weights, alone.

    Args:
        model: the trained float Keras model (not changed: its weights are restored).
        val: ``(x, y)``; the first ``samples`` are scored.
        samples: the slice's size. Defaults to `SLICE`.

    Returns:
        ``{"samples", "accuracy", "layers": {name: {"share", "channels": {ratio: loss},
        "sparsity": loss, "int4": loss}}}``; losses are fractions (0.01 = 1 point), ``share`` the
        layer's part of the kernel weights.
    """
    x = np.asarray(val[0][:samples], dtype="float32")
    y = np.asarray(val[1][:samples]).reshape(-1)
    base = _accuracy(model, x, y).mean()
    layers = _kernel_layers(model)
    total = sum(int(np.prod(layer.kernel.shape)) for layer in layers) or 1
    out = {}
    for layer in layers:
        saved = [w.copy() for w in layer.get_weights()]
        kernel = np.asarray(layer.kernel)
        bias = np.asarray(layer.bias) if getattr(layer, "bias", None) is not None else None

        def loss(new_kernel, new_bias=bias, layer=layer, saved=saved):
            layer.kernel.assign(new_kernel)
            if new_bias is not None:
                layer.bias.assign(new_bias)
            acc = _accuracy(model, x, y).mean()
            layer.set_weights(saved)
            return float(max(0.0, base - acc))

        out[layer.name] = {
            "share": int(np.prod(kernel.shape)) / total,
            "channels": {r: loss(*_cut(kernel, bias, r)) for r in CHANNEL_RATIOS},
            "sparsity": loss(_sparse(kernel, SPARSITY)),
            "int4": loss(_int4(kernel)),
        }
    return {"samples": len(y), "accuracy": float(base), "layers": out}


def layer_plan(sensitivity: dict, tolerance: float) -> dict:
    """Per-layer settings whose one-shot loss (`layer_sensitivity`) is at most ``tolerance``.

    Returns:
        ``{"channels": {layer: ratio}, "prune": [layers], "bits4": [layers]}``: the largest
        channel ratio of each layer within the tolerance (layers with none are left out), the
        layers holding >= `LARGE_SHARE` of the weights that take `SPARSITY`, and the layers that
        take 4-bit weights.
    """
    plan: dict = {"channels": {}, "prune": [], "bits4": []}
    for name, s in sensitivity["layers"].items():
        ok = [float(r) for r, lost in s["channels"].items() if lost <= tolerance]  # JSON: str keys
        if ok:
            plan["channels"][name] = max(ok)
        if s["share"] >= LARGE_SHARE and s["sparsity"] <= tolerance:
            plan["prune"].append(name)
        if s["int4"] <= tolerance:
            plan["bits4"].append(name)
    return plan


def plans(sensitivity: dict, tolerances) -> dict[str, dict]:
    """``{"plan@<tolerance>": layer_plan}`` for each tolerance, leaving out a plan that changes
    nothing or repeats an earlier one."""
    out: dict[str, dict] = {}
    for t in tolerances:
        plan = layer_plan(sensitivity, t)
        if any(plan.values()) and plan not in out.values():
            out[f"plan@{t:g}"] = plan
    return out
