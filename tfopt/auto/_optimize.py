"""The automatic optimizer's entry point: `optimize` checks its arguments and runs a `Search`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfopt import _rundir
from tfopt._backend import check_model
from tfopt._budget import Budget, check_accuracy_drop
from tfopt.auto._search import CLOSEST_FILE, DEFAULT_TARGET, Search
from tfopt.tune._space import TARGETS

_logger = logging.getLogger(__name__)

AUTO_OBJECTIVES = ("size", "latency", "ram")


@dataclass
class AutoResult:
    """What `optimize` found. ``best`` is None when no candidate met the budget.

    ``recipe`` is ``out_dir/recipe.yaml``, the best candidate as a `tfopt run` config (None
    without a best candidate); ``ratio`` is gzip-to-gzip. When no candidate meets the budgets,
    ``closest`` is the candidate nearest to them (outside the budget; ``closest["misses"]`` names
    the budgets it misses) and ``closest_path`` its copy, ``out_dir/closest_over_budget.tflite``;
    ``rejections`` counts the candidates that miss each budget (and those that failed);
    ``budget`` is the `Budget` the search kept to.
    """

    baseline: dict
    candidates: list[dict]
    front: list[str]
    best: dict | None
    best_path: Path | None
    report: dict[str, Path]
    stopped: str
    elapsed_s: float
    out_dir: Path
    extra: dict = field(default_factory=dict)
    recipe: Path | None = None
    closest: dict | None = None
    closest_path: Path | None = None
    rejections: dict = field(default_factory=dict)
    budget: Budget | None = None

    @property
    def ratio(self) -> float | None:
        """Gzip-to-gzip: the float32 TFLite's gzip bytes / the best artifact's gzip bytes."""
        return None if self.best is None else self.best["ratio"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best_path"] = None if self.best_path is None else str(self.best_path)
        d["recipe"] = None if self.recipe is None else str(self.recipe)
        d["closest_path"] = None if self.closest_path is None else str(self.closest_path)
        d["report"] = {k: str(v) for k, v in self.report.items()}
        d["out_dir"] = str(self.out_dir)
        return d


def check_budget(max_accuracy_drop) -> float:
    """Raises ValueError unless ``max_accuracy_drop`` is a fraction in [0, 1)."""
    return check_accuracy_drop(max_accuracy_drop)


def search_identity(
    model,
    train,
    val,
    test,
    *,
    budget: Budget,
    target,
    objective,
    techniques,
    seeds,
    space,
    seed,
) -> dict:
    """What a search directory records about its inputs (`tfopt._rundir.claim_identity`): the
    model's weights, the data's bytes and every setting that changes a result. Budgets of time
    and trials are left out: a resumed search may get more of them."""
    return {
        "model": _rundir.model_digest(model),
        "data": {
            "train": _rundir.array_digest(*train),
            "val": _rundir.array_digest(*val),
            "test": None if test is None else _rundir.array_digest(*test),
        },
        "settings": {
            "max_accuracy_drop": budget.max_accuracy_drop,
            "target": target,
            "objective": objective,
            "techniques": None if techniques is None else sorted(techniques),
            "seeds": None if seeds is None else [dict(s) for s in seeds],
            "space": space,
            "seed": int(seed),
            "budgets": budget.limits(),
        },
    }


def _spent(out_dir: Path) -> float:
    """Seconds an earlier search in ``out_dir`` ran (its report's ``elapsed_s``), else 0."""
    import json

    try:
        return max(0.0, float(json.loads((out_dir / "report.json").read_text())["elapsed_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def check_search_args(*, time_budget=None, max_trials=None, refine=None) -> None:
    """Raises ValueError for a time budget, trial count or refine count out of range.

    `tfopt auto` calls it before it trains the baseline, `optimize` again.
    """
    ok = isinstance(time_budget, int | float) and not isinstance(time_budget, bool)
    if time_budget is not None and not (ok and 0 < time_budget < float("inf")):
        raise ValueError(
            f"time_budget must be a finite number of seconds > 0. Received: time_budget={time_budget!r}"
        )
    if max_trials is not None and not (_is_int(max_trials) and 1 <= max_trials <= 100_000):
        raise ValueError(
            f"max_trials must be an int in [1, 100000]. Received: max_trials={max_trials!r}"
        )
    if refine is not None and not (_is_int(refine) and 0 <= refine <= 100_000):
        raise ValueError(f"refine must be an int in [0, 100000]. Received: refine={refine!r}")


def _check_data(name: str, data, model) -> tuple[np.ndarray, np.ndarray]:
    """``data`` as an ``(x, y)`` pair the model can train on (`tfopt.data._checks`)."""
    from tfopt.data._checks import check_input_shape, check_pair

    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(
            f"{name} must be an (x, y) pair of arrays. Received: {name}={type(data).__name__}"
        )
    x, y = check_pair(data[0], data[1], (f"{name}[0]", f"{name}[1]"))
    if not isinstance(model.input_shape, list):
        check_input_shape(model.input_shape[1:], x.shape[1:], what=name, taker=repr(model.name))
    return x.astype("float32"), y


def optimize(
    model,
    train,
    val,
    budget: Budget | None = None,
    *,
    test=None,
    max_accuracy_drop: float | None = None,
    target: str | None = None,
    objective: str = "size",
    time_budget: float | None = None,
    max_trials: int | None = None,
    refine: int | None = None,
    out_dir="tfopt_auto",
    techniques: Sequence[str] | None = None,
    seeds: Sequence[dict] | None = None,
    space: dict | None = None,
    overwrite: bool = False,
    seed: int = 0,
    run_config=None,
    verbose: int = 1,
    **unknown,
) -> AutoResult:
    """Finds the smallest (or fastest) deployable artifact within an accuracy budget.

    The float ``model`` is exported to a float32 TFLite file and measured through it (the
    baseline). Then compression recipes (channel pruning, magnitude pruning, clustering, QAT or
    PTQ, each stage fine-tuned with optional distillation from the float model) are screened with
    short fine-tunes: first the unchanged model quantized to ``target`` (int8 PTQ, then int8 QAT
    only if PTQ misses the budgets: `SAFE_FIRST`), so that one or two trials already give a
    deployable model whenever int8 fits; then recipes derived from the model (a per-layer
    sensitivity pass on a val slice, `tfopt.auto._sensitivity`: per-layer channel ratios, pruned
    layers and 4-bit layers within a one-shot loss tolerance), then a short generic list
    (`KNOWN_GOOD`), then KerasTuner's Bayesian optimization. Screening trials fine-tune on at most
    `SCREEN_SAMPLES` training samples. A refinement stage follows: the most promising small
    candidates within `REFINE_MARGIN` of the budget (see `refine_queue`) are re-run on all the
    training data with `REFINE_EPOCHS` times the fine-tuning and distillation from the float
    model (`refine_recipe`). Every candidate is
    exported to ``target`` and measured *through the exported file*: accuracy on ``val`` (and
    ``test`` when given), gzip size, latency.

    Selection uses ``val`` only: a candidate is within budget when its val accuracy is at most
    ``max_accuracy_drop`` below the baseline's on the same samples (the paired point estimate;
    its 95% paired interval, `tfopt._stats.paired_delta`, is reported next to it; the log and the
    report say up front when the budget is finer than the val split can resolve,
    `split_resolution`), and the best is the smallest
    (or fastest) refined candidate within budget, or, while there is none, the smallest screened
    one (the smallest of many short, noisy screens tends to owe its place to a lucky val score).
    ``test`` is measured and reported, never used to choose, so its drop is an independent check
    of the choice. After every trial the best artifact so far is copied to
    ``out_dir/best.tflite`` and the report (``report.json``, ``report.md``, ``pareto.png`` with the
    Pareto front of accuracy vs size vs latency) is rewritten, so an interrupted run (Ctrl-C, time
    budget) leaves a complete report; running again with the same ``out_dir`` resumes the search.
    While no candidate meets the budgets, the closest one is copied to
    ``out_dir/closest_over_budget.tflite`` (never ``best.tflite``), and the report counts the
    candidates that miss each budget.

    Every candidate is a list of `tfopt run` steps run by the recipe engine (its stages start from
    ``seed``), and the best one is also written as ``out_dir/recipe.yaml``, a `tfopt run` config
    (the float ``model`` saved as ``out_dir/baseline.keras``, the steps, ``target`` as the export
    format) that rebuilds its artifact: ``tfopt run out_dir/recipe.yaml``.

    Args:
        model: the trained float Keras 3 model (not modified).
        train: ``(x, y)`` fine-tuning data (also the calibration data).
        val: ``(x, y)`` held-out data the search measures and selects on.
        budget: what a candidate must meet, a `Budget`: the accuracy drop on ``val`` and,
            optionally, RAM, flash and robustness (candidates that miss one are rejected, with
            the reason in the report). Give it, or ``max_accuracy_drop`` alone. Defaults to None.
        test: ``(x, y)`` held-out data measured and reported for every candidate, never used for
            selection. Defaults to None.
        max_accuracy_drop: the allowed accuracy drop on ``val``, a fraction (0.005 = half a
            point): the same as ``budget=Budget(max_accuracy_drop)``. Defaults to None.
        target: the artifact format, one of ``tfopt.tune.TARGETS``; ``"tflm"`` measures accuracy
            and latency in TensorFlow Lite for Microcontrollers. Defaults to None:
            ``"tflite-int8"``, or ``"tflite-dynamic"`` (int8 weights, float activations: no
            calibration) when the int8 conversion of ``model`` fails, e.g. TFLite's calibrator
            crashing on a recurrent model; the log and the report's ``target_note`` say so.
        objective: ``"size"`` (gzip bytes), ``"latency"`` (p50) or ``"ram"`` (TFLite Micro's
            arena bytes). Defaults to "size".
        time_budget: seconds for the search and the refinement (the last `REFINE_SHARE` of it is
            kept for refinement; when nothing is left to refine and time is, screening resumes for
            the search's share of what is left, then refinement again); no trial starts that
            would likely overrun it. Defaults to None (no limit).
        max_trials: the number of screening trials. Defaults to None (20 when ``time_budget`` is
            None too).
        refine: the largest number of refinement runs; 0 turns the stage off. Defaults to None: as
            many as the time budget allows, or ``max(1, max_trials // 5)`` without a time budget.
        out_dir: the run directory (search state, artifacts, report). Defaults to "tfopt_auto".
        techniques: compression techniques to search. Defaults to all available ones.
        seeds: recipes (hyperparameter values) to try first. Defaults to `default_seeds`.
        space: hyperparameter choices overriding the defaults, e.g. ``{"clusters": [0, 16]}``.
            Defaults to None.
        overwrite: discard a previous search in ``out_dir`` instead of resuming it (only a
            directory tfopt created is ever removed). Defaults to False.
        seed: the search's random seed, and the global Keras seed every candidate's stages start
            from (``seed:`` of recipe.yaml). Defaults to 0.
        run_config: the `tfopt.config.RunConfig` (or its dict) whose data and model sections
            produced ``model`` and the data; recipe.yaml takes its ``data`` section from it.
            Defaults to None (recipe.yaml then says to set ``data.name``).
        verbose: 1 logs one line per trial on the ``tfopt.auto`` loggers at INFO, 0 at DEBUG
            (`tfopt auto` shows INFO; ``logging.basicConfig(level=logging.INFO)`` shows it in
            a script). Defaults to 1.
        **unknown: refused. The RAM, flash, latency and robustness budgets are fields of
            ``budget`` (``max_ram=`` here is a TypeError that says so).

    Returns:
        An `AutoResult`: the baseline, every candidate (refined ones have ``phase="refine"`` and
        ``refined_from``), the Pareto front, the best candidate (or None), the report's paths and
        ``recipe`` (the path of recipe.yaml, or None).

    Every candidate of an int8 target is also run in TFLite Micro when tflite-micro is
    installed: the report gives its arena, flash and argmax agreement with LiteRT (or why it was
    not measured), and the Pareto front is over RAM and flash too.

    Raises:
        ValueError: an argument out of range (named in the message), or neither or both of
            ``budget`` and ``max_accuracy_drop``.
        TypeError: ``model`` is not a Keras 3 model, or a budget given as its own keyword.
        MissingDependencyError: the target, a RAM budget or the RAM objective needs TFLite Micro
            and tflite-micro is not installed.

    Example:
        >>> res = tfopt.auto.optimize(model, train=ds.train, val=ds.val, test=ds.test,
        ...                           max_accuracy_drop=0.005, max_trials=10, out_dir="runs/auto")
        >>> res.best["gzip_bytes"], res.ratio
        >>> tight = tfopt.auto.Budget(max_accuracy_drop=0.01, max_ram="64KB", max_flash="256KB")
        >>> res = tfopt.auto.optimize(model, ds.train, ds.val, tight, target="tflm")
    """
    _refuse_unknown(unknown)
    return run_search(
        model, train, val, _budget_of(budget, max_accuracy_drop), test=test, target=target,
        objective=objective, time_budget=time_budget, max_trials=max_trials, refine=refine,
        out_dir=out_dir, techniques=techniques, seeds=seeds, space=space, overwrite=overwrite,
        seed=seed, run_config=run_config, verbose=verbose,
    )  # fmt: skip


def _refuse_unknown(unknown: dict) -> None:
    """A budget given as its own keyword (``max_ram=``) is refused with the one way to give it;
    any other unknown keyword as Python would."""
    if not unknown:
        return
    from dataclasses import fields

    budgets = [f.name for f in fields(Budget)]
    given = {k: v for k, v in unknown.items() if k in budgets}
    if given:
        kw = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise TypeError(
            f"optimize takes its budgets as one value: budget=tfopt.auto.Budget("
            f"max_accuracy_drop=..., {kw}). Received: {kw}"
        )
    raise TypeError(f"optimize() got an unexpected keyword argument {next(iter(unknown))!r}")


def run_search(
    model,
    train,
    val,
    budget: Budget,
    *,
    screen: bool = True,
    role: str | None = None,
    test=None,
    target: str | None = None,
    objective: str = "size",
    time_budget: float | None = None,
    max_trials: int | None = None,
    refine: int | None = None,
    out_dir="tfopt_auto",
    techniques: Sequence[str] | None = None,
    seeds: Sequence[dict] | None = None,
    space: dict | None = None,
    overwrite: bool = False,
    seed: int = 0,
    run_config=None,
    verbose: int = 1,
) -> AutoResult | None:
    """`optimize` with a `Budget`, as one process of a search: ``screen`` False refines and
    reports the trials already in ``out_dir`` (what `tfopt auto --workers` does after its workers
    screened); ``role`` ``"chief"`` serves the screening oracle at
    ``KERASTUNER_ORACLE_IP:PORT`` until the screening ends, ``"worker"`` runs screening trials
    from the chief (`tfopt.tune._distributed`); both return None."""
    _check_settings(model, budget, target=target, objective=objective, role=role)
    check_search_args(time_budget=time_budget, max_trials=max_trials, refine=refine)
    train = _check_data("train", train, model)
    val = _check_data("val", val, model)
    test = None if test is None else _check_data("test", test, model)
    from tfopt.data._checks import check_attack_radius

    check_attack_radius(budget.robust_epsilon, val[0])
    if max_trials is None and time_budget is None:
        max_trials = 20
    if refine is None and time_budget is None:
        refine = max(1, int(max_trials) // 5)

    started = time.monotonic()
    out_dir = _rundir.prepare(out_dir, overwrite=overwrite, resume=True, by="tfopt auto")
    # one process per run directory (the chief and workers of `tfopt auto --workers` work under
    # their launcher's lock)
    with _rundir.lock(out_dir, command="tfopt auto") if role is None else nullcontext():
        if run_config is not None and not isinstance(run_config, dict):
            run_config = run_config.model_dump(serialize_as_any=True)
        settings = dict(target=target, objective=objective, techniques=techniques, seeds=seeds,
                        space=space, seed=seed)  # fmt: skip
        identity = search_identity(model, train, val, test, budget=budget, **settings)
        _rundir.claim_identity(out_dir, "search", identity, what="search")
        spent = _spent(out_dir)
        if spent:  # a resumed search: the time budget counts the time the earlier runs spent
            started -= spent
            if time_budget is not None and verbose:
                _logger.info(
                    f"[auto] resuming: {spent:.0f} s of the {time_budget:.0f} s time budget spent"
                )
        search = Search(
            model, train, val, test=test, budget=budget, out_dir=out_dir, max_trials=max_trials,
            run_config=run_config, verbose=verbose, started=started, worker=role == "worker",
            **settings,
        ).start()  # fmt: skip
        if role is not None:
            return _distributed_role(search, role, time_budget=time_budget, refine=refine)
        stopped = search.run(
            time_budget=time_budget, max_trials=max_trials, refine=refine, screen=screen
        )
        search.finish(stopped)
        return _result(search, stopped)


def _budget_of(budget: Budget | None, max_accuracy_drop) -> Budget:
    """``budget``, or the accuracy-only budget of ``max_accuracy_drop`` (exactly one is given)."""
    if (budget is None) == (max_accuracy_drop is None):
        raise ValueError(
            "optimize needs exactly one of budget= (a tfopt.auto.Budget) and max_accuracy_drop= "
            f"(a fraction). Received: budget={budget!r}, max_accuracy_drop={max_accuracy_drop!r}"
        )
    if budget is None:
        return Budget(max_accuracy_drop)
    if not isinstance(budget, Budget):
        raise TypeError(
            "budget must be a tfopt.auto.Budget, e.g. Budget(max_accuracy_drop=0.01). "
            f"Received: budget={budget!r}"
        )
    return budget


def _check_settings(model, budget: Budget, *, target: str, objective: str, role) -> None:
    """Refuses a model that is not Keras 3, an unknown target, objective or role, and budgets
    the target cannot measure (`Budget.check_target`)."""
    check_model(model)
    target = DEFAULT_TARGET if target is None else target
    if target not in TARGETS:
        raise ValueError(f"Unrecognized target={target!r}. Supported targets are: {list(TARGETS)}")
    if objective not in AUTO_OBJECTIVES:
        raise ValueError(
            f"Unrecognized objective={objective!r}. Supported objectives are: {list(AUTO_OBJECTIVES)}"
        )
    if role not in (None, "chief", "worker"):
        raise ValueError(f"role must be None, 'chief' or 'worker'. Received: role={role!r}")
    budget.check_target(target, objective)


def _result(search: Search, stopped: str) -> AutoResult:
    """The `AutoResult` of a finished ``search``."""
    closest_ = search.data["closest"]
    return AutoResult(
        baseline=search.baseline,
        candidates=search.data["candidates"],
        front=search.data["front"],
        best=search.data["best"],
        best_path=None if search.best is None else search.out_dir / "best.tflite",
        report=search.report,
        stopped=stopped,
        elapsed_s=time.monotonic() - search.started,
        out_dir=search.out_dir,
        extra={
            "techniques": list(search.hypermodel.techniques),
            "seeds": search.seeds,
            "refinement": search.data["refinement"],
            "max_accuracy_drop": search.budget.max_accuracy_drop,
            "budgets": search.budget.limits(),
            "resolution": search.resolution,
        },
        recipe=search.recipe_path,
        closest=closest_,
        closest_path=None if closest_ is None else search.out_dir / CLOSEST_FILE,
        rejections=search.data["rejections"],
        budget=search.budget,
    )


def _distributed_role(search, role: str, *, time_budget, refine) -> None:
    """The chief or a worker of a distributed screening (`tfopt auto --workers`)."""
    import os

    from tfopt.tune import _distributed as dist

    if role == "chief":
        search.set_deadline(time_budget, refine)
        dist.serve(search.tuner, os.environ["KERASTUNER_ORACLE_IP"],
                   int(os.environ["KERASTUNER_ORACLE_PORT"]))  # fmt: skip
    else:
        search.screen(None)
    return None
