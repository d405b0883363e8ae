"""Running trials: train (optionally), run the recipe stages, export, measure the artifact, score."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras_tuner
import numpy as np

from tfopt import _rundir
from tfopt._budget import Budget
from tfopt._worker import rss_mb
from tfopt.export._measure import ExportFailed, export_and_measure
from tfopt.tune._hparams import write_config, write_trial
from tfopt.tune._recipe import describe, dump_steps

OBJECTIVES = ("accuracy", "size", "latency", "ram")
KINDS = ("random", "bayesian", "hyperband")


def score(
    metrics: dict,
    objective: str = "accuracy",
    *,
    baseline_accuracy: float | None = None,
    max_accuracy_drop: float | None = None,
    size_weight: float = 0.0,
    latency_weight: float = 0.0,
    max_ram: int | None = None,
    max_flash: int | None = None,
    max_latency_ms: float | None = None,
    min_robust_accuracy: float | None = None,
) -> float:
    """The scalar a search maximizes, from the measurements of an exported artifact.

    * ``"accuracy"``: ``val_accuracy - size_weight * log2(gzip_bytes) - latency_weight *
      log2(latency_ms)``.
    * ``"size"``: ``-log2(gzip_bytes)``; ``"latency"``: ``-log2(latency_ms)``; ``"ram"``:
      ``-log2(arena_bytes)`` (TFLite Micro's arena).

    With ``max_ram`` / ``max_flash`` (bytes), a candidate over either loses ``1 + log2(measured
    / budget)`` for each (one point per doubling over), so the search learns what fits; one
    whose arena was not measured counts as over the RAM budget.

    With ``min_robust_accuracy``, a candidate whose ``robust_accuracy`` (PGD, `export_and_measure`)
    is lower loses ``1 + 100 * shortfall``, as for the accuracy budget; unmeasured counts as 0.

    With ``max_accuracy_drop`` (and ``baseline_accuracy``), a candidate whose accuracy drop exceeds
    the budget loses ``1 + 100 * excess`` (one halving of size per point over budget, plus one),
    so the search learns the feasible region instead of ignoring it.

    Args:
        metrics: ``val_accuracy``, ``gzip_bytes`` and ``latency_ms`` of the artifact.
        objective: one of `OBJECTIVES`. Defaults to "accuracy".
        baseline_accuracy: the float baseline's accuracy. Defaults to None.
        max_accuracy_drop: the allowed drop (0.005 = half a point). Defaults to None (no constraint).
        size_weight: see above. Defaults to 0.0.
        latency_weight: see above. Defaults to 0.0.
        max_ram: the arena budget in bytes (``metrics["arena_bytes"]``). Defaults to None.
        max_flash: the flash budget in bytes (``metrics["flash_bytes"]``, else ``bytes``).
            Defaults to None.
        max_latency_ms: the latency budget in milliseconds (``metrics["latency_ms"]``): it
            costs as the RAM budget does. Defaults to None.
        min_robust_accuracy: the least ``metrics["robust_accuracy"]``. Defaults to None.

    Returns:
        The score (higher is better).

    Raises:
        ValueError: unknown objective, or a budget without a baseline.

    Example:
        >>> tfopt.tune.score({"val_accuracy": 0.9, "gzip_bytes": 1024, "latency_ms": 0.1}, "size")
        -10.0
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"Unrecognized objective={objective!r}. Supported: {list(OBJECTIVES)}")
    if max_accuracy_drop is not None and baseline_accuracy is None:
        raise ValueError("max_accuracy_drop needs baseline_accuracy (the float model's accuracy).")
    acc = float(metrics["val_accuracy"])
    size = math.log2(max(float(metrics["gzip_bytes"]), 1.0))
    lat = math.log2(max(float(metrics["latency_ms"]), 1e-6))
    if objective == "accuracy":
        value = acc - size_weight * size - latency_weight * lat
    elif objective == "size":
        value = -size
    elif objective == "ram":
        value = -math.log2(max(float(metrics.get("arena_bytes") or 2**40), 1.0))
    else:
        value = -lat
    limits = ((max_ram, "arena_bytes"), (max_flash, "flash_bytes"), (max_latency_ms, "latency_ms"))
    for budget, key in limits:
        if budget is None:
            continue
        measured = metrics.get(key) or (metrics.get("bytes") if key == "flash_bytes" else None)
        over = math.log2(float(measured) / budget) if measured else 10.0
        if over > 0:
            value -= 1.0 + over
    if min_robust_accuracy is not None:
        shortfall = min_robust_accuracy - float(metrics.get("robust_accuracy") or 0.0)
        if shortfall > 1e-12:
            value -= 1.0 + 100.0 * shortfall
    if max_accuracy_drop is not None:
        excess = (baseline_accuracy - acc) - max_accuracy_drop
        if excess > 1e-12:
            value -= 1.0 + 100.0 * excess
    return float(value)


def _kernel_sparsity(model) -> float:
    kernels = [
        np.asarray(w)
        for layer in model._flatten_layers()
        for w in getattr(layer, "weights", [])
        if "kernel" in w.path and len(w.shape) > 1
    ]
    total = sum(k.size for k in kernels)
    return float(sum(int((k == 0).sum()) for k in kernels) / total) if total else 0.0


def run_candidate(
    model,
    steps: Sequence,
    *,
    train,
    val,
    out_dir,
    target: str = "tflite-int8",
    test=None,
    teacher=None,
    seed: int | None = None,
    representative_samples: int = 200,
    latency_runs: int = 50,
    verbose: int = 0,
    robust_epsilon: float | None = None,
):
    """Runs the recipe ``steps`` on ``model`` with the recipe engine, exports, measures the file.

    This is how every search candidate is made (a `Tuner` trial, a `tfopt.auto` refinement run),
    and what `tfopt run` does with the same steps.

    Args:
        model: the float model the stages start from (not changed).
        steps: `tfopt.config.StepConfig` objects (e.g. `CompressionHyperModel.steps`).
        train: ``(x, y)`` fine-tuning data; its first ``representative_samples`` inputs calibrate.
        val: ``(x, y)`` the accuracy the search sees.
        out_dir: where ``model.tflite`` is written.
        target: one of `TARGETS`. Defaults to "tflite-int8".
        test: ``(x, y)`` measured and reported. Defaults to None.
        teacher: the float model distilling stages learn from. Defaults to None (``model``).
        seed: passed to `tfopt._steps.run_steps` (global Keras seed before the stages). Defaults
            to None (not seeded).
        representative_samples: calibration samples. Defaults to 200.
        latency_runs: timed invocations of the artifact. Defaults to 50.
        verbose: Keras fit verbosity. Defaults to 0.
        robust_epsilon: also measure PGD accuracy at this radius through the artifact
            (`export_and_measure`). Defaults to None.

    Returns:
        ``(final_model, metrics, facts)``: the model exported, the `export_and_measure`
        ``metrics``, and
        what the stages recorded (plus ``kernel_sparsity``).

    Raises:
        ExportFailed: the candidate could not be exported. Any other error propagates.
    """
    from tfopt._steps import StepContext, run_steps
    from tfopt.data import Dataset

    x, y = np.asarray(train[0], dtype="float32"), np.asarray(train[1])
    xv, yv = np.asarray(val[0], dtype="float32"), np.asarray(val[1])
    data = Dataset("search", x, y, xv, yv, xv[:0], yv[:0], int(model.outputs[0].shape[-1]))
    ctx = StepContext(
        data=data,
        run_dir=Path(out_dir),
        baseline=model if teacher is None else teacher,
        batch_size=64,
        verbose=verbose,
        seed=0 if seed is None else seed,
        tensorboard=False,
        validate=bool(verbose),  # shown only when someone watches; the artifact is measured
        quiet=True,
    )
    final = run_steps(steps, model, ctx, seed=seed)
    facts = {**ctx.records, "kernel_sparsity": _kernel_sparsity(final)}
    # the exporter of `tfopt run`'s export.formats: the formats table says how `target` is made
    metrics = export_and_measure(
        final,
        Path(out_dir) / "model.tflite",
        format=target,
        representative=x[:representative_samples],
        val=val,
        test=test,
        robust_epsilon=robust_epsilon,
        overwrite=True,  # the search's own trial directory (a resumed trial runs again)
        warmup=5,
        runs=latency_runs,
        concurrency=(),  # a search reads p50 latency only: no 3-second load test per trial
    ).metrics
    return final, metrics, facts


def _release_earlier_trials() -> None:
    """What KerasTuner's own `_try_build` does before each model (this `run_trial` replaces
    it): the graphs and kernel caches of earlier trials' models are freed. Without it a search
    process grew by ~45 MB a trial (``benchmarks/auto_memory.py``)."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


class Tuner(keras_tuner.Tuner):
    """A KerasTuner `Tuner` whose trials are measured through the exported TFLite artifact.

    ``run_trial`` builds the model of the trial's hyperparameters (`CompressionHyperModel.build`),
    trains it (builder mode), runs its recipe stages (`CompressionHyperModel.steps`, the step
    configs of `tfopt run`) with the recipe engine, exports it to its target format and measures
    the file on the validation data (and the test data when given) with
    `tfopt.export.export_and_measure`, as `tfopt run` does (`run_candidate`). A candidate that fails to export is a failed trial
    (`keras_tuner.errors.FailedTrialError`); the search goes on. Any other error is a bug, not a
    failed trial: it is recorded (status ``"ERROR"``) and re-raised to KerasTuner unchanged. Each trial's hparams and metrics go
    to TensorBoard (hparams plugin) under ``<directory>/<project_name>/tensorboard``, and its
    measurements to ``trial_<id>/tfopt.json``.

    Use `tfopt.tune.create_tuner` to build one with a random, Bayesian or Hyperband oracle.

    Args:
        oracle: a KerasTuner oracle whose objective is ``keras_tuner.Objective("score", "max")``.
        hypermodel: a `CompressionHyperModel`.
        epochs: float training epochs per trial (builder mode; Hyperband sets its own). Defaults
            to 1.
        objective: see `tfopt.tune.score`. Defaults to "accuracy".
        baseline_accuracy: for the accuracy budget. Defaults to None.
        budget: the `tfopt.auto.Budget` trials are scored against (`tfopt.tune.score`); its
            ``robust_epsilon``, when set, also measures PGD accuracy through each artifact.
            Defaults to None (no budget).
        size_weight: see `tfopt.tune.score`. Defaults to 0.0.
        latency_weight: see `tfopt.tune.score`. Defaults to 0.0.
        representative_samples: calibration samples taken from the training inputs. Defaults to 200.
        latency_runs: timed invocations per artifact. Defaults to 50.
        on_trial_done: called with ``(trial_id, record)`` after each trial (records hold the
            hyperparameters, the status and the measurements). Defaults to None.
        save_models: also save each compressed Keras model as ``trial_<id>/model.keras``.
            Defaults to False.
        trial_seed: when given, every trial's stages start from this global Keras seed (so a
            trial's recipe replays in `tfopt run` with ``seed:`` set to it). Defaults to None.
        directory: the search's directory. Defaults to "tfopt_tune".
        project_name: the project's name inside ``directory``. Defaults to "search".
        overwrite: start afresh instead of resuming. Defaults to False.
        **kwargs: passed to `keras_tuner.Tuner`.

    Example:
        >>> tuner = tfopt.tune.create_tuner(hm, kind="random", max_trials=3, directory="runs/t")
        >>> tuner.search((x, y), (xv, yv))
    """

    def __init__(
        self,
        oracle,
        hypermodel,
        *,
        epochs: int = 1,
        objective: str = "accuracy",
        baseline_accuracy: float | None = None,
        budget: Budget | None = None,
        size_weight: float = 0.0,
        latency_weight: float = 0.0,
        representative_samples: int = 200,
        latency_runs: int = 50,
        on_trial_done: Callable | None = None,
        save_models: bool = False,
        trial_seed: int | None = None,
        directory: str = "tfopt_tune",
        project_name: str = "search",
        overwrite: bool = False,
        **kwargs,
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"Unrecognized objective={objective!r}. Supported: {list(OBJECTIVES)}")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0. Received: epochs={epochs}")
        self.epochs = int(epochs)
        self.score_options = dict(
            objective=objective,
            baseline_accuracy=baseline_accuracy,
            size_weight=size_weight,
            latency_weight=latency_weight,
            **({} if budget is None else budget.score_options()),
        )
        self.robust_epsilon = None if budget is None else budget.robust_epsilon
        score({"val_accuracy": 1.0, "gzip_bytes": 1, "latency_ms": 1}, **self.score_options)
        self.representative_samples = int(representative_samples)
        self.latency_runs = int(latency_runs)
        self.on_trial_done = on_trial_done
        self.save_models = bool(save_models)
        self.trial_seed = trial_seed
        super().__init__(
            oracle=oracle,
            hypermodel=hypermodel,
            directory=directory,
            project_name=project_name,
            overwrite=overwrite,
            **kwargs,
        )

    @property
    def log_dir(self) -> Path:
        """The TensorBoard directory of the search (hparams plugin)."""
        return Path(self.project_dir) / "tensorboard"

    def on_search_begin(self):
        super().on_search_begin()
        write_config(self.log_dir, self.oracle.get_space())

    def run_trial(self, trial, train, val, *, test=None, teacher=None, verbose=0):
        """Runs one trial; returns its metrics (``score`` is the objective).

        Args:
            trial: the KerasTuner trial.
            train: ``(x, y)`` training data.
            val: ``(x, y)`` validation data; the score is measured on it through the artifact.
            test: ``(x, y)`` also measured (reported, never optimized). Defaults to None.
            teacher: the float model to distill from. Defaults to None (the trial's own float
                model).
            verbose: Keras fit verbosity. Defaults to 0.

        Returns:
            ``{"score", "val_accuracy", "gzip_bytes", "bytes", "latency_ms"}`` (+ test_accuracy).

        Raises:
            keras_tuner.errors.FailedTrialError: the candidate could not be exported.
        """
        hp = trial.hyperparameters
        started = time.perf_counter()
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        trial_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "trial_id": trial.trial_id,
            "values": dict(hp.values),
            "status": "RUNNING",
            "tuner_id": self.tuner_id,  # which process ran it (distributed searches)
        }
        _release_earlier_trials()
        try:
            model = self.hypermodel.build(hp)
            # Hyperband's budget: each trial trains a fresh model for tuner/epochs epochs.
            epochs = int(hp.values.get("tuner/epochs", self.epochs))
            if epochs > 0:
                self.hypermodel.fit(
                    hp, model, train, epochs=epochs, validation_data=val, verbose=verbose
                )
            steps = self.hypermodel.steps(hp)
            record["recipe"] = self.hypermodel.recipe(hp)
            record["steps"] = dump_steps(steps)
            record["stages"] = describe(steps, self.hypermodel.target)
            final, metrics, facts = run_candidate(
                model,
                steps,
                train=train,
                val=val,
                test=test,
                out_dir=trial_dir,
                target=self.hypermodel.target,
                teacher=teacher,
                seed=self.trial_seed,
                representative_samples=self.representative_samples,
                latency_runs=self.latency_runs,
                verbose=verbose,
                robust_epsilon=self.robust_epsilon,
            )
            record["facts"] = facts
        except ExportFailed as e:
            record.update(status="FAILED", error=str(e), seconds=time.perf_counter() - started)
            self._finish(trial, trial_dir, record)
            raise keras_tuner.errors.FailedTrialError(str(e)) from e
        except Exception as e:  # a bug, not a failed candidate: recorded, then KerasTuner's
            record.update(
                status="ERROR",
                error=f"{type(e).__name__}: {e}",
                seconds=time.perf_counter() - started,
            )
            self._finish(trial, trial_dir, record)
            raise
        metrics["score"] = score(metrics, **self.score_options)
        record.update(status="COMPLETED", metrics=metrics, seconds=time.perf_counter() - started)
        record["resident_mb"] = round(rss_mb(), 1)  # the search process after the trial
        if self.hypermodel.model is None:  # builder mode: keep the trained float model
            _rundir.save_model(model, trial_dir / "float.keras")
        if self.save_models:
            try:
                _rundir.save_model(final, trial_dir / "model.keras")
                record["keras_model"] = str(trial_dir / "model.keras")
            except Exception as e:  # a wrapper without a saveable config must not fail the trial
                record["keras_model_error"] = f"{type(e).__name__}: {e}"
        self._finish(trial, trial_dir, record)
        write_trial(self.log_dir, trial.trial_id, hp.values, metrics)
        return {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    def _finish(self, trial, trial_dir: Path, record: dict) -> None:
        # paths relative to the trial's directory, with sizes and hashes; written atomically
        _rundir.write_json(trial_dir / "tfopt.json", _rundir.seal_record(record, trial_dir))
        if self.on_trial_done is not None:
            self.on_trial_done(trial.trial_id, {**record, "dir": str(trial_dir)})

    def records(self) -> list[dict]:
        """The ``tfopt.json`` records of all finished trials, in trial order.

        Paths in a record (``metrics.path``, ``keras_model``) are relative to its directory,
        ``record["dir"]``. A record that cannot be read (a damaged file) is left out.
        """
        out = []
        for path in sorted(Path(self.project_dir).glob("trial_*/tfopt.json")):
            try:
                record = json.loads(path.read_text())
            except (ValueError, OSError):
                continue
            out.append({**record, "dir": str(path.parent)})
        return out

    def save_model(self, trial_id, model, step=0):
        _rundir.save_model(model, Path(self.get_trial_dir(trial_id)) / "float.keras")

    def load_model(self, trial):
        """The trained float model of a builder-mode trial (``trial_<id>/float.keras``)."""
        from tfopt.models import load

        return load(Path(self.get_trial_dir(trial.trial_id)) / "float.keras")

    def artifact_path(self, trial) -> Path:
        """The exported ``.tflite`` of a trial."""
        return Path(self.get_trial_dir(trial.trial_id)) / "model.tflite"


def _conforms(hp, value) -> bool:
    """Whether ``value`` lies in the hyperparameter's domain."""
    kind = type(hp).__name__
    if kind == "Fixed":
        return value == hp.value
    if kind == "Choice":
        return value in hp.values
    if kind == "Boolean":
        return isinstance(value, bool)
    if kind in ("Int", "Float"):
        return hp.min_value <= value <= hp.max_value
    return True


class _SeededMixin:
    """Proposes the given ``seeds`` (hyperparameter values) first, then the oracle's own."""

    def __init__(self, *args, seeds: Sequence[dict] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.seeds = [dict(s) for s in seeds]

    def _seed_values(self) -> dict | None:
        started = len(self.start_order)
        if started >= len(self.seeds):
            return None
        values = {hp.name: hp.default for hp in self.hyperparameters.space}
        space = {hp.name: hp for hp in self.hyperparameters.space}
        for name, value in self.seeds[started].items():
            if name not in values:
                raise ValueError(
                    f"seed {self.seeds[started]} names {name!r}, which is not in the search "
                    f"space {sorted(values)}"
                )
            if _conforms(space[name], value):  # a value the space excludes keeps the default
                values[name] = value
        return values

    def populate_space(self, trial_id):
        values = self._seed_values()
        if values is not None:
            return {"status": "RUNNING", "values": values}
        return super().populate_space(trial_id)


class SeededRandomSearchOracle(_SeededMixin, keras_tuner.oracles.RandomSearchOracle):
    """`RandomSearchOracle` that tries ``seeds`` first."""


class SeededBayesianOptimizationOracle(
    _SeededMixin, keras_tuner.oracles.BayesianOptimizationOracle
):
    """`BayesianOptimizationOracle` that tries ``seeds`` first (they count as initial points).

    KerasTuner's Gaussian process, with a cheaper proposal step: the upper confidence bound is
    evaluated on ``num_candidates`` random points in one batch (instead of 50 L-BFGS restarts with
    numerical gradients, which take tens of seconds per trial on a busy 2-core machine), and the
    best point not tried yet is proposed.
    """

    num_candidates = 4096

    def _make_gpr(self):
        gpr = super()._make_gpr()
        gpr.n_restarts_optimizer = 3
        return gpr

    def populate_space(self, trial_id):
        values = self._seed_values()
        if values is not None:
            return {"status": "RUNNING", "values": values}
        completed = [t for t in self.trials.values() if t.status == "COMPLETED"]
        initial = self.num_initial_points or max(3 * len(self.hyperparameters.space), 3)
        if len(completed) < initial or not self._nonfixed_space():
            return self._random_populate_space()
        x, y = self._vectorize_trials()
        self.gpr.fit(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0))
        bounds = self._get_hp_bounds()
        candidates = self._random_state.uniform(
            bounds[:, 0], bounds[:, 1], size=(self.num_candidates, bounds.shape[0])
        )
        mu, sigma = self.gpr.predict(candidates, return_std=True)
        for index in np.argsort(mu - self.beta * sigma):  # lowest bound first (minimization)
            values = self._vector_to_values(candidates[index])
            if self._compute_values_hash(values) not in self._tried_so_far:
                return {"status": "RUNNING", "values": values}
        return self._random_populate_space()


def create_tuner(
    hypermodel,
    *,
    kind: str = "bayesian",
    max_trials: int = 10,
    seeds: Sequence[dict] = (),
    seed: int | None = 0,
    max_epochs: int = 3,
    max_consecutive_failed_trials: int = 5,
    **kwargs,
) -> Tuner:
    """Builds a `Tuner` with a random-search, Bayesian-optimization or Hyperband oracle.

    Args:
        hypermodel: a `CompressionHyperModel`.
        kind: ``"random"``, ``"bayesian"`` (needs scikit-learn) or ``"hyperband"``. Defaults to
            "bayesian".
        max_trials: trials to run (random/bayesian); Hyperband derives its own count from
            ``max_epochs``. Defaults to 10.
        seeds: hyperparameter values to try first (random/bayesian), e.g. known-good recipes.
            Defaults to ().
        seed: the oracle's random seed. Defaults to 0.
        max_epochs: Hyperband's largest training budget per trial. Defaults to 3.
        max_consecutive_failed_trials: stop the search after this many failures in a row.
            Defaults to 5.
        **kwargs: passed to `Tuner` (``directory``, ``project_name``, ``overwrite``, ``epochs``,
            ``objective``, ...).

    Returns:
        The `Tuner`; call ``tuner.search(train, val, test=..., teacher=...)``.

    Raises:
        ValueError: an unknown ``kind``, or ``seeds`` with Hyperband.

    Example:
        >>> hm = tfopt.tune.CompressionHyperModel(builder="mnist1d_cnn")
        >>> tuner = tfopt.tune.create_tuner(hm, kind="random", max_trials=4, directory="runs/tune")
        >>> tuner.search((x, y), (xv, yv))
    """
    if kind not in KINDS:
        raise ValueError(f"Unrecognized kind={kind!r}. Supported kinds are: {list(KINDS)}")
    if max_trials < 1:
        raise ValueError(f"max_trials must be >= 1. Received: max_trials={max_trials}")
    objective = keras_tuner.Objective("score", "max")
    common = dict(
        objective=objective, seed=seed, max_consecutive_failed_trials=max_consecutive_failed_trials
    )
    if kind == "random":
        oracle = SeededRandomSearchOracle(max_trials=max_trials, seeds=seeds, **common)
    elif kind == "bayesian":
        oracle = SeededBayesianOptimizationOracle(max_trials=max_trials, seeds=seeds, **common)
    else:
        if seeds:
            raise ValueError(
                "seeds= is not supported with kind='hyperband' (it plans its brackets)."
            )
        oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=max_epochs, factor=3, **common)
    return Tuner(oracle, hypermodel, **kwargs)
