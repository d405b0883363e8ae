"""From a point of the search space (a flat dict of hyperparameters) to recipe stages.

The search (`tfopt.tune`, `tfopt.auto`) does not run techniques itself: `recipe_steps` turns the
values KerasTuner proposes into the `tfopt run` stage configs of `tfopt._steps` (validated by
`tfopt.config.validate_steps`), and the recipe engine (`tfopt._steps.run_steps`) runs them. So a
searched candidate is a `tfopt run` config (`steps:`) that replays it.

A flat recipe's keys (all optional; missing keys switch the stage off):

===================  ========================================================================
``channel_ratio``    fraction of channels removed by channel pruning (0 off)
``channel_scope``    ``"dense"`` (only the widest hidden Dense layer), ``"all"`` layers, or
                     ``"all_dense"`` (all layers, then the widest Dense layer again)
``sparsity``         target weight sparsity of magnitude pruning (0 off)
``schedule``         ``"polynomial"`` or ``"constant"`` pruning schedule
``prune_scope``      ``"large"`` (layers with >= 5% of the kernel weights) or ``"all"`` layers
``clusters``         weight clusters per layer (0 off)
``quantization``     ``"qat"`` (quantization-aware fine-tuning) or ``"ptq"`` (calibration only)
``weight_bits``      QAT weight bits: ``8``; ``4`` (every layer INT4 in the file); ``"mixed"``
                     (4 bits where `tfopt.quantize.choose_bits` finds it cheap on val, else 8)
``distill``          fine-tune every stage against the float teacher's logits (bool)
``temperature``      distillation temperature
``alpha``            weight of the student (label) loss; ``1 - alpha`` goes to distillation
``epochs``           fine-tuning epochs of the pruning stage (the other stages use a share of it)
``learning_rate``    fine-tuning learning rate
``batch_size``       fine-tuning batch size
``lowrank_energy``   SVD energy kept by low-rank factorization of the kernels (0 off)
``channel_plan``     ``{layer: ratio}``: per-layer channel ratios, used when ``channel_scope``
                     starts with ``"plan"`` (one ``prune_channels`` step per ratio)
``prune_layers``     the layers magnitude pruning takes, when ``prune_scope`` starts with
                     ``"plan"``
``bits4_layers``     the layers QAT gives 4-bit weights, when ``weight_bits`` starts with
                     ``"plan"`` (the others 8)
===================  ========================================================================

The ``"plan..."`` values are per-layer settings derived from the model (`tfopt.auto`'s
sensitivity pass); the steps name the layers in ``filters`` / ``bits``, so they replay as they are.

The stages, in order: ``lowrank`` (``epochs // 4``; factorizes only where the rank saves weights)
-> ``prune_channels`` (``epochs // 2``) -> ``prune`` (``epochs``, target reached
at 70% of the fine-tuning) -> ``cluster`` (``epochs // 4``) -> ``qat`` (``epochs // 4``, half the
learning rate; int8 targets only, and never after clustering: QAT fine-tuning would move the
weights off their clusters, while calibrated int8 keeps <= n_clusters values per channel). Every
stage fine-tunes with a cosine-decayed learning rate, distilling from the float model when
``distill`` is set.
"""

from __future__ import annotations

import importlib

from tfopt import _formats as formats

TECHNIQUES = ("prune", "prune_channels", "quantize", "cluster", "distill", "lowrank")
# searched only when asked for (techniques=[..., "lowrank"]): the default search stays as measured
OPT_IN = ("lowrank",)

# technique -> (module, attributes it needs)
_APIS = {
    "prune": ("tfopt.prune", ("prune", "strip", "PolynomialDecay", "ConstantSparsity")),
    "prune_channels": ("tfopt.prune", ("prune_channels",)),
    "quantize": ("tfopt.quantize", ("qat",)),
    "cluster": ("tfopt.cluster", ("cluster", "strip")),
    "distill": ("tfopt.distill", ("Distiller",)),
    "lowrank": ("tfopt.lowrank", ("factorize",)),
}


def quantization(target: str) -> str:
    """The `tfopt.export.tflite` quantization mode of a search ``target`` (the formats table)."""
    if target not in formats.targets():
        raise ValueError(
            f"Unrecognized target={target!r}. Supported targets are: {list(formats.targets())}"
        )
    return formats.get(target).quantization


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def available_techniques() -> tuple[str, ...]:
    """Names of the compression techniques whose tfopt modules are installed with their API.

    Returns:
        A tuple, a subset of `TECHNIQUES`.

    Example:
        >>> "prune" in tfopt.tune.available_techniques()
        True
    """
    out = []
    for tech in TECHNIQUES:
        module_name, attrs = _APIS[tech]
        module = _module(module_name)
        if module is not None and all(hasattr(module, a) for a in attrs):
            out.append(tech)
    return tuple(out)


def recipe_steps(recipe: dict, *, target: str = "tflite-int8") -> list:
    """The `tfopt run` stage configs of a flat search ``recipe`` (see the module docstring).

    Args:
        recipe: the hyperparameter values (`CompressionHyperModel.recipe`).
        target: the deployable format, one of `tfopt.tune.TARGETS`. Defaults to "tflite-int8".

    Returns:
        A list of validated `tfopt.config.StepConfig` objects (empty: post-training only).

    Example:
        >>> [s.type for s in tfopt.tune.recipe_steps({"sparsity": 0.8, "quantization": "qat"})]
        ['prune', 'qat']
    """
    from tfopt.config import validate_steps

    int8 = quantization(target) == "int8"
    epochs = int(recipe.get("epochs", 8))
    lr = float(recipe.get("learning_rate", 5e-4))
    fine: dict = {"lr_schedule": "cosine", "batch_size": int(recipe.get("batch_size", 64))}
    if recipe.get("distill"):
        fine["distill"] = {
            "temperature": float(recipe.get("temperature", 4.0)),
            "alpha": float(recipe.get("alpha", 0.1)),
        }
    raw: list[dict] = []
    energy = float(recipe.get("lowrank_energy", 0.0) or 0.0)
    if energy > 0:
        raw.append(
            {
                "type": "lowrank",
                "energy": energy,
                "epochs": max(1, epochs // 4),
                "learning_rate": lr,
                **fine,
            }
        )
    raw += _channel_steps(recipe, epochs, lr, fine)
    prune, sparsity = _prune_step(recipe, epochs, lr, fine)
    raw += prune
    clusters = int(recipe.get("clusters", 0) or 0)
    if clusters > 0:
        raw.append(
            {
                "type": "cluster",
                "n_clusters": clusters,
                "preserve_sparsity": sparsity > 0,
                "epochs": max(1, epochs // 4),
                "learning_rate": lr,
                **fine,
            }
        )
    qat = int8 and recipe.get("quantization", "ptq") == "qat"
    if qat and clusters == 0:
        raw.append(
            {
                "type": "qat",
                "preserve_sparsity": sparsity > 0,
                **_bits(recipe.get("weight_bits", 8), recipe.get("bits4_layers")),
                "epochs": max(1, epochs // 4),
                "learning_rate": lr / 2,
                **fine,
            }
        )
    return validate_steps(raw)


def _channel_steps(recipe: dict, epochs: int, lr: float, fine: dict) -> list[dict]:
    """The recipe's ``prune_channels`` steps: a per-layer plan's, or one per ``channel_scope``
    part at ``channel_ratio`` (none at ratio 0)."""
    ratio = float(recipe.get("channel_ratio", 0.0) or 0.0)
    if ratio <= 0:
        return []
    if str(recipe.get("channel_scope", "")).startswith("plan"):
        return _planned_channel_steps(recipe.get("channel_plan") or {}, epochs, lr, fine)
    scope = recipe.get("channel_scope", "dense")
    if scope not in ("dense", "all", "all_dense"):
        raise ValueError(
            f"channel_scope must be 'dense', 'all' or 'all_dense'. Received: channel_scope={scope!r}"
        )
    # "all_dense": every layer, then the widest hidden Dense layer again (a microcontroller
    # model: narrower convolutions and a much narrower Dense)
    scopes = {"dense": ["widest_dense"], "all": ["all"], "all_dense": ["all", "widest_dense"]}
    return [
        {
            "type": "prune_channels",
            "ratio": ratio,
            "steps": 1,
            "epochs_per_step": max(1, epochs // 2),
            "learning_rate": lr,
            "scope": step_scope,
            **fine,
        }
        for step_scope in scopes[scope]
    ]


def _prune_step(recipe: dict, epochs: int, lr: float, fine: dict) -> tuple[list[dict], float]:
    """The recipe's magnitude-pruning step (none at sparsity 0, or when a per-layer plan prunes
    no layer) and the sparsity it prunes to."""
    sparsity = float(recipe.get("sparsity", 0.0) or 0.0)
    where: dict = {"scope": recipe.get("prune_scope", "large")}
    if str(where["scope"]).startswith("plan"):
        layers = recipe.get("prune_layers") or []
        where = {"filters": _exact(layers)} if layers else {}
        sparsity = sparsity if layers else 0.0  # the plan prunes no layer
    if sparsity <= 0:
        return [], sparsity
    step = {
        "type": "prune",
        "target_sparsity": sparsity,
        "schedule": recipe.get("schedule", "polynomial"),
        "end_fraction": 0.7,
        "epochs": epochs,
        "learning_rate": lr,
        **where,
        **fine,
    }
    return [step], sparsity


# flat ``weight_bits`` -> the qat step's ``bits``
_WEIGHT_BITS = {"8": {}, "4": {"bits": {".*": 4}}, "mixed": {"bits": "sensitivity"}}


def _exact(names) -> list[str]:
    """Regexes that select exactly the layers ``names`` (filters are searched in layer names)."""
    import re

    return [f"^{re.escape(n)}$" for n in names]


def _planned_channel_steps(plan: dict, epochs: int, lr: float, fine: dict) -> list[dict]:
    """One ``prune_channels`` step per ratio of ``plan`` (``{layer: ratio}``), largest first."""
    steps = []
    for ratio in sorted({float(r) for r in plan.values() if float(r) > 0}, reverse=True):
        names = sorted(n for n, r in plan.items() if float(r) == ratio)
        steps.append(
            {
                "type": "prune_channels",
                "ratio": ratio,
                "steps": 1,
                "epochs_per_step": max(1, epochs // 2),
                "learning_rate": lr,
                "filters": _exact(names),
                **fine,
            }
        )
    return steps


def _bits(weight_bits, bits4_layers=None) -> dict:
    if str(weight_bits).startswith("plan"):
        return {"bits": {e: 4 for e in _exact(bits4_layers)}} if bits4_layers else {}
    if str(weight_bits) not in _WEIGHT_BITS:
        raise ValueError(
            f"weight_bits must be 8, 4, 'mixed' or 'plan...'. Received: weight_bits={weight_bits!r}"
        )
    return _WEIGHT_BITS[str(weight_bits)]


def describe(steps, target: str) -> list[str]:
    """Short labels of a recipe's stages for reports, e.g. ``["prune(0.9,polynomial,large)",
    "qat", "distill(T=2)"]``; ``"ptq"`` marks post-training int8."""
    labels = []
    for s in steps:
        if s.type == "prune_channels":
            amount = s.ratio if s.ratio is not None else s.macs_reduction
            scope = "dense" if s.scope == "widest_dense" else _where(s)
            labels.append(f"prune_channels({amount:g},{scope})")
        elif s.type == "prune":
            labels.append(f"prune({s.target_sparsity:g},{s.schedule},{_where(s)})")
        elif s.type == "cluster":
            labels.append(f"cluster({s.n_clusters})")
        elif s.type == "lowrank":
            rule = f"r={s.rank_ratio:g}" if s.rank_ratio is not None else f"{s.energy:g}"
            labels.append(f"lowrank({rule})")
        elif s.type == "qat" and s.bits is not None:
            labels.append("qat(w4)" if s.bits == {".*": 4} else "qat(w4/8)")
        else:
            labels.append(s.type)
    if quantization(target) == "int8" and not any(s.type == "qat" for s in steps):
        labels.append("ptq")
    temps = {s.distill.temperature for s in steps if getattr(s, "distill", None) is not None}
    if temps:
        labels.append(f"distill(T={max(temps):g})")
    return labels


def _where(step) -> str:
    """A step's layers for a label: its scope, or how many layers its filters name."""
    if isinstance(step.filters, list | tuple):
        return f"{len(step.filters)} layers"
    return step.scope if step.filters is None else "filters"


def dump_steps(steps) -> list[dict]:
    """The stage configs as plain YAML/JSON-able dicts: every set value (a recipe pins all of
    them, so a later change of a default does not change its replay), the step's own keys first,
    the fine-tuning keys last."""
    from tfopt.config import FineTuneStepConfig

    last = set(FineTuneStepConfig.model_fields) - {"type", "name"}
    out = []
    for s in steps:
        d = s.model_dump(exclude_none=True, mode="json")
        out.append(
            {k: d[k] for k in [*(k for k in d if k not in last), *(k for k in d if k in last)]}
        )
    return out
