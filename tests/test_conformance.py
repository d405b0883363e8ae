"""The conformance suite: every technique on every zoo model (tests/_zoo.py).

Each cell runs wrap -> fit one step -> ``.keras`` save/load -> strip -> export -> parity with
Keras (`_zoo.run_pipeline`) and asserts the cell's `EXPECTED` outcome:

- ``OK``: the whole pipeline passes, and the technique did what it says (sparsity reached,
  kernels clustered, layers quantized, channels removed).
- `Skips`: the pipeline passes and the technique's report lists these layers as skipped, with
  a reason (``pruning_report``, ``cluster_report``, ``qat_report``, the channel plan).
- `Raises`: the stage raises this exception type with a one-line message that names the layer
  (or the unsupported feature) and says why. A raw traceback from inside Keras is never expected.

Cells that do not reach their expected outcome on today's code are in `TODAY` and carry
``xfail(strict=True)``: when the shared rewriter fixes one, its mark must go.

Export matrix (the file must stay within minutes on 2 cores): the plain model goes through
"tflite", "onnx" and post-training "tflite-int8" once; prune, prune_channels and lowrank through "tflite",
cluster through "onnx", qat through "tflite-int8". The keras.applications models carry
``pytest.mark.slow`` and export only the plain model (tflite) and the QAT copy (tflite-int8);
MobileNetV3Small's qat and prune_channels cells run here; MobileNetV2 (330 s of CPU) and
EfficientNetB0 only in benchmarks/conformance_matrix.py.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from _zoo import TECHNIQUES, ZOO, Outcome, run_pipeline

OK = "ok"


@dataclass(frozen=True)
class Skips:
    """The pipeline passes and the report lists ``layers`` (name -> regex of the reason) as
    skipped."""

    layers: dict[str, str] = field(default_factory=dict)
    shrinks: bool = True  # prune_channels: False when no group of channels can be pruned


@dataclass(frozen=True)
class Raises:
    """``stage`` raises ``exc`` whose message matches ``match`` (and is one line)."""

    stage: str
    exc: type[BaseException]
    match: str


def _multi_io(fmt: str) -> Raises:
    # tfopt.export runs one input and one output: a clear ValueError is the supported outcome
    return Raises(f"export:{fmt}", ValueError, "one input and one output")


_ANY_REASON = r"\w"
_UNREGISTERED = "tfopt.register_layer"  # a reason is given; its wording is the technique's

# What SHOULD happen for every (technique, model). Not listed: OK.
EXPECTED: dict[tuple[str, str], object] = {
    # layers a technique does not support are left as they are and reported, with the reason
    ("prune", "bilstm"): Skips({"bilstm": _ANY_REASON}),
    ("prune", "gru"): Skips({"gru": _ANY_REASON}),
    ("cluster", "bilstm"): Skips({"bilstm": _ANY_REASON}),
    ("cluster", "gru"): Skips({"gru": _ANY_REASON}),
    ("cluster", "text_cnn"): Skips({"embedding": "Embedding"}),
    ("qat", "bilstm"): Skips({"bilstm": "recurrent"}),
    ("qat", "gru"): Skips({"gru": "recurrent"}),
    ("qat", "conv3d"): Skips({"conv3d": "CONV_3D"}),
    ("qat", "time_distributed"): Skips({"td_conv": "TimeDistributed"}),
    ("prune_channels", "text_cnn"): Skips({"embedding": "Embedding"}),
    ("prune_channels", "gru"): Skips({"gru": "GRU"}, shrinks=False),
    ("prune_channels", "bilstm"): Skips({"bilstm": "Bidirectional"}, shrinks=False),
    ("prune_channels", "time_distributed"): Skips({"td_conv": "TimeDistributed"}, shrinks=False),
    ("prune_channels", "vit_block"): Skips({"mha": "MultiHeadAttention"}),
    # channel pruning needs a graph of layers: a subclassed model is a clear TypeError
    ("prune_channels", "subclassed"): Raises("wrap", TypeError, "subclassed model"),
    # low-rank factorization turns one layer into two: it needs a graph of layers
    ("lowrank", "subclassed"): Raises("wrap", TypeError, "subclassed model"),
    # several inputs/outputs: every technique works, the export says it takes one of each
    ("baseline", "two_in_two_out"): _multi_io("tflite"),
    ("prune", "two_in_two_out"): _multi_io("tflite"),
    ("cluster", "two_in_two_out"): _multi_io("onnx"),
    ("qat", "two_in_two_out"): _multi_io("tflite-int8"),
    ("prune_channels", "two_in_two_out"): _multi_io("tflite"),
    ("lowrank", "two_in_two_out"): _multi_io("tflite"),
    # a user's layer that tfopt was not told about (tfopt.register_layer) is left as it is
    ("prune", "users_layer_unregistered"): Skips({"users_dense": _UNREGISTERED}),
    ("cluster", "users_layer_unregistered"): Skips({"users_dense": "not clusterable"}),
    ("qat", "users_layer_unregistered"): Skips({"users_dense": "not supported by tfopt QAT"}),
    # fc1 feeds the unknown layer and the logits are the output: no group can shrink
    ("prune_channels", "users_layer_unregistered"): Skips(
        {"users_dense": "UnregisteredDense is not supported"}, shrinks=False
    ),
}

# Cells whose outcome today differs from EXPECTED: (technique, model) -> (the exception
# today's code raises, what and where). An AssertionError is a `Raises` cell whose message did not
# match (pytest.raises(match=) fails with one).
TODAY: dict[tuple[str, str], tuple[type[BaseException], str]] = {}


def _cells():
    for model, entry in ZOO.items():
        for technique in TECHNIQUES:
            if entry.in_suite is False or (
                entry.in_suite is not True and technique not in entry.in_suite
            ):
                continue
            if (
                TECHNIQUES[technique].models is not None
                and model not in TECHNIQUES[technique].models
            ):
                continue
            key = (technique, model)
            marks = [pytest.mark.slow] if ZOO[model].slow else []
            if key in TODAY:
                exc, reason = TODAY[key]
                marks.append(pytest.mark.xfail(strict=True, raises=exc, reason=reason))
            yield pytest.param(technique, model, marks=marks, id=f"{technique}-{model}")


def _assert_effect(technique: str, outcome: Outcome, entry, expected) -> None:
    """The technique changed what it claims to change in the exported model."""
    import tfopt

    final = outcome.final
    if technique == "prune":
        layers = tfopt.prune.sparsity(final).layers
        pruned = {k: v for k, v in layers.items() if v["sparsity"] > 0}
        assert pruned, f"no pruned layer in the stripped model: {layers}"
        for name, v in pruned.items():  # ConstantSparsity(0.5): half of every kernel, +- rounding
            assert 0.45 <= v["sparsity"] <= 0.55, (name, v)
    elif technique == "cluster":
        counts = tfopt.cluster.distinct_values(final)
        assert counts and max(counts.values()) <= 8, counts
    elif technique == "cqat":  # each clustered kernel QAT wraps still gathers <= 4 values
        from tfopt.quantize import QuantizeWrapper

        wrappers = [x for x in final._flatten_layers() if isinstance(x, QuantizeWrapper)]
        clustered = set(tfopt.cluster.cluster(entry.build(), 4).cluster_report.changed)
        kept = {w.layer.name: w for w in wrappers if w.clusters is not None}
        assert kept and set(kept) == clustered & {w.layer.name for w in wrappers}, (kept, clustered)
        for name, w in kept.items():
            values = np.unique(np.asarray(w.trained_kernel()))
            assert len(values) <= 4, (name, values)
    elif technique == "prune_channels":
        before, after = entry.build().count_params(), final.count_params()
        shrinks = getattr(expected, "shrinks", True)
        assert after < before if shrinks else after == before, (before, after)
    elif technique == "lowrank":  # a factorized layer always saves weights; none: same model
        before, after = entry.build().count_params(), final.count_params()
        factored = [x.name for x in final._flatten_layers() if x.name.endswith("_lowrank")]
        assert after < before if factored else after == before, (factored, before, after)


def _run(technique: str, model: str, tmp_path, outcome: Outcome) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # converter and schedule warnings are not the subject
        run_pipeline(TECHNIQUES[technique], ZOO[model], tmp_path, outcome)


@pytest.mark.parametrize(("technique", "model"), list(_cells()))
def test_conformance(technique, model, tmp_path):
    expected = EXPECTED.get((technique, model), OK)
    outcome = Outcome()
    if isinstance(expected, Raises):
        with pytest.raises(expected.exc, match=expected.match) as info:
            _run(technique, model, tmp_path, outcome)
        assert outcome.stage == expected.stage, f"raised at {outcome.stage}: {info.value}"
        assert "\n" not in str(info.value).strip(), f"not a one-line error: {info.value}"
        return
    _run(technique, model, tmp_path, outcome)
    assert outcome.stage == "done"
    _assert_effect(technique, outcome, ZOO[model], expected)
    if isinstance(expected, Skips):
        for layer, reason in expected.layers.items():
            assert layer in outcome.skipped, f"{layer} not reported as skipped: {outcome.skipped}"
            assert re.search(reason, outcome.skipped[layer]), outcome.skipped[layer]


def test_users_registered_layer_counts_its_macs_and_is_changed_by_every_technique():
    """One tfopt.register_layer call: the MAC counter counts the layer, and each technique's
    report lists it as changed (the pipeline itself runs in `test_conformance`)."""
    from _zoo import users_layer, users_layer_unregistered

    import tfopt
    from tfopt._measure import count_macs

    registered, unregistered = users_layer(), users_layer_unregistered()
    assert count_macs(registered) == 16 * 16 + 16 * 16 + 16 * 10
    assert count_macs(unregistered) == 16 * 16 + 16 * 10  # an unknown layer counts 0
    for technique in ("prune", "cluster", "qat"):
        report = TECHNIQUES[technique].wrap(registered)[0].tfopt_report
        assert "users_dense" in report.changed, (technique, report)
    small, plan = tfopt.prune.prune_channels(registered, 0.5)
    assert small.get_layer("users_dense").units == 8, plan


def test_zoo_models_are_small_and_match_their_heads():
    """Every zoo model builds with inputs <= 32x32, its dataset fits it, and its head matches
    ``from_logits`` (softmax heads output probabilities)."""
    import keras

    assert len(ZOO) == 20  # 19 suite architectures + EfficientNetB0 (conformance_matrix only)
    for name, entry in ZOO.items():
        model = entry.build()
        x, y = entry.data()
        xs = x if isinstance(x, list) else [x]
        assert all(len(arr) == len(y if entry.single_io else y[0]) for arr in xs), name
        assert all(d <= 32 for arr in xs for d in arr.shape[1:3]), name
        out = model(x, training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        for o in outs:
            o = keras.ops.convert_to_numpy(o)
            sums = o.sum(-1)
            is_probs = bool(np.allclose(sums, 1.0, atol=1e-3) and o.min() >= 0)
            assert is_probs != entry.from_logits, name
