def recalibrate(model, x, keras, batches=50, batch_size=128):
    """Re-estimate BN moving stats as the plain average over `batches` training-mode batches."""
    bns = [layer for layer in _walk(model) if type(layer).__name__ == "BatchNormalization"]
    old = [b.momentum for b in bns]
    for i in range(batches):
        xb = x[i * batch_size : (i + 1) * batch_size]
        for b in bns:
            b.momentum = i / (i + 1.0)
        model(xb, training=True)
    for b, m in zip(bns, old):
        b.momentum = m
    return len(bns)


def _walk(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk(layer)
        if hasattr(layer, "layer"):
            yield layer.layer
