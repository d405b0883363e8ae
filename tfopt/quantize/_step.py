"""The ``qat`` recipe step of ``tfopt run``: quantization-aware fine-tuning.

The step returns the QAT model; the pipeline then exports it with ``quantization="int8"`` (the
learned ranges replace representative data).

Example config:

    steps:
      - type: qat
        epochs: 3
        learning_rate: 0.0001
        preserve_sparsity: true   # keep a pruned model's zeros
        preserve_clusters: auto   # keep a clustered model's clusters (true | false | auto)
        bits: {"fc1|conv.*": 4}   # per-layer weight bits (INT4 in the file); others 8
        # or bits: sensitivity    # 4 bits where post-training int4 costs <= bits_max_drop (val)
"""

from __future__ import annotations

from tfopt.config._steps import QatStepConfig


def preflight(cfg: QatStepConfig, model, ctx) -> None:
    """Checks, before any training, that ``filters`` select a layer of ``model``."""
    from tfopt._steps import check_filters_match

    check_filters_match(cfg.filters, model)
    if cfg.bits == "sensitivity":
        from tfopt.quantize._lowbit import _aeq

        _aeq()  # choose_bits measures through LiteRT Quantizer: the pip hint before training
    elif cfg.bits and model is not None:
        from tfopt._rewrite import layer_filter

        for key in cfg.bits:
            if not any(layer_filter(key)(layer) for layer in model.layers):
                names = [layer.name for layer in model.layers]
                raise ValueError(
                    f"bits key {key!r} selects no layer of model {model.name!r}. Its layers: "
                    f"{names}"
                )


def run(cfg: QatStepConfig, model, ctx):
    """Wraps ``model`` for QAT, fine-tunes it and returns the QAT model (export it as int8).

    Returns:
        The fitted QAT model (`tfopt.quantize.qat` output).
    """
    from tfopt.quantize import qat
    from tfopt.quantize._callbacks import QuantizationSummaries

    bits = _sensitive_bits(cfg, model, ctx) if cfg.bits == "sensitivity" else cfg.bits
    q = qat(
        model,
        scheme=cfg.scheme,
        filters=cfg.filters,
        preserve_sparsity=cfg.preserve_sparsity,
        preserve_clusters=cfg.preserve_clusters,
        bits=bits,
    )
    report = q.qat_report
    ctx.log(
        f"qat: {len(report.changed)} layers quantized, "
        f"{len(report.details['folded'])} BatchNorms folded, {len(report.skipped)} left float"
    )
    ctx.fit(
        q,
        epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        callbacks=ctx.summaries(QuantizationSummaries, "quantization"),
    )
    ctx.record("qat_report", report.to_dict())
    return q


def _sensitive_bits(cfg: QatStepConfig, model, ctx) -> dict[str, int]:
    """``bits="sensitivity"``: `tfopt.quantize.choose_bits` on the val data (each layer's weights
    at int4 post-training, measured through LiteRT, lowered greedily least sensitive first while
    the accuracy stays within ``bits_max_drop`` of the float TFLite model), as exact-name regexes
    for ``qat(bits=)``. QAT then fine-tunes with those bits and wins back part of the cost."""
    import re

    from tfopt.quantize import choose_bits

    plan = choose_bits(
        model, ctx.data.val, max_accuracy_drop=cfg.bits_max_drop, mode="w8", low_bits=4
    )
    ctx.record(
        "bits",
        {"plan": plan.bits, "accuracy": plan.accuracy, "float_accuracy": plan.float_accuracy},
    )
    low = sorted(k for k, v in plan.bits.items() if v == 4)
    ctx.log(f"qat: 4-bit weights by sensitivity: {low or 'none'}, 8 bits for the rest")
    return {f"^{re.escape(k)}$": v for k, v in plan.bits.items()}
