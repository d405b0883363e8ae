"""How a `tfopt tune` trial runs: build the point's model, train it with the point's ``train:``
options (`tfopt._training.fit`, the trainer of `tfopt run`), measure it, save it.

The oracles are KerasTuner's (Hyperband, Bayesian optimization, random search) with a time budget
and a trial cap: past either, ``populate_space`` answers ``{"status": "STOPPED"}``, which ends the
search on every worker of a distributed search as well.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras_tuner

from tfopt._backend import import_keras
from tfopt.tune._hparams import write_config, write_trial

keras = import_keras()

ALGORITHMS = ("hyperband", "bayesian", "random")
METRICS = ("val_accuracy", "test_accuracy", "epochs_trained", "seconds")


class _Budget:
    """Stops proposing trials after ``time_budget`` seconds (from this process's start of the
    search) or once ``trial_cap`` trials were started."""

    def __init__(self, *args, time_budget: float | None = None, trial_cap: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.time_budget = time_budget
        self.trial_cap = trial_cap
        self._started = time.monotonic()

    def populate_space(self, trial_id):
        over_time = self.time_budget is not None and (
            time.monotonic() - self._started >= self.time_budget
        )
        over_count = self.trial_cap is not None and len(self.start_order) >= self.trial_cap
        if over_time or over_count:
            return {"status": "STOPPED"}
        return super().populate_space(trial_id)


class HyperbandOracle(_Budget, keras_tuner.oracles.HyperbandOracle):
    """KerasTuner's Hyperband oracle with a time budget and a trial cap."""


class BayesianOracle(_Budget, keras_tuner.oracles.BayesianOptimizationOracle):
    """KerasTuner's Bayesian-optimization oracle with a time budget."""


class RandomOracle(_Budget, keras_tuner.oracles.RandomSearchOracle):
    """KerasTuner's random-search oracle with a time budget."""


def make_oracle(
    algorithm: str = "hyperband",
    *,
    max_trials: int | None = None,
    max_epochs: int = 40,
    time_budget: float | None = None,
    seed: int = 0,
):
    """The oracle of a training search.

    Args:
        algorithm: one of `ALGORITHMS`. Defaults to "hyperband".
        max_trials: the most trials (Hyperband: a cap on its own plan; others: 20 when None).
            Defaults to None.
        max_epochs: Hyperband's largest budget per trial. Defaults to 40.
        time_budget: seconds after which no trial starts. Defaults to None.
        seed: the oracle's seed. Defaults to 0.

    Raises:
        ValueError: an unknown algorithm.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"Unrecognized algorithm={algorithm!r}. Supported algorithms are: {list(ALGORITHMS)}"
        )
    common = dict(
        objective=keras_tuner.Objective("val_accuracy", "max"),
        seed=seed,
        time_budget=time_budget,
        max_consecutive_failed_trials=3,
    )
    if algorithm == "hyperband":
        return HyperbandOracle(max_epochs=max_epochs, factor=3, trial_cap=max_trials, **common)
    cls = BayesianOracle if algorithm == "bayesian" else RandomOracle
    return cls(max_trials=max_trials or 20, **common)


class TrainingTuner(keras_tuner.Tuner):
    """Runs the trials of a training search (`TrainingHyperModel`).

    A trial seeds Keras with ``seed`` (as `tfopt run` does), builds the point's model, trains it
    with `tfopt._training.fit` for the point's epochs (Hyperband's ``tuner/epochs`` when set),
    measures validation accuracy (the objective) and test accuracy (reported only), saves the
    trained model (no augmentation layers) as ``trial_<id>/model.keras`` and its record as
    ``trial_<id>/tfopt.json``, and logs hparams and metrics to TensorBoard under
    ``<project>/tensorboard``.

    Args:
        oracle: see `make_oracle`.
        hypermodel: a `TrainingHyperModel`.
        seed: the global Keras seed of every trial. Defaults to 0.
        directory: the search directory. Defaults to "tfopt_tune".
        project_name: the project inside it. Defaults to "search".
        overwrite: discard an earlier search instead of resuming it. Defaults to False.
        on_trial_done: called as ``on_trial_done(record)`` after each trial. Defaults to None.
    """

    def __init__(
        self,
        oracle,
        hypermodel,
        *,
        seed: int = 0,
        directory: str = "tfopt_tune",
        project_name: str = "search",
        overwrite: bool = False,
        on_trial_done=None,
        **kwargs,
    ):
        self.seed = int(seed)
        self.on_trial_done = on_trial_done
        super().__init__(
            oracle=oracle,
            hypermodel=hypermodel,
            directory=directory,
            project_name=project_name,
            overwrite=overwrite,
            **kwargs,
        )
        # our own progress lines (`on_trial_done`) replace KerasTuner's display
        getattr(self.oracle, "_oracle", self.oracle).verbose = 0
        from tfopt.tune._distributed import pace_idle

        pace_idle(self)  # a worker's gRPC client: no busy loop while IDLE

    @property
    def log_dir(self) -> Path:
        return Path(self.project_dir) / "tensorboard"

    def on_search_begin(self):
        super().on_search_begin()
        write_config(self.log_dir, self.oracle.get_space(), metrics=METRICS)

    def run_trial(self, trial, data, *, verbose: int = 0):
        """Trains and measures one point; returns ``{"val_accuracy": ...}``.

        Args:
            trial: the KerasTuner trial.
            data: a `tfopt.data.Dataset` (train fits, val scores, test is reported).
            verbose: Keras fit verbosity. Defaults to 0.
        """
        from tfopt._training import fit, fit_transfer

        hp = trial.hyperparameters
        started, started_at = time.perf_counter(), time.time()
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        trial_dir.mkdir(parents=True, exist_ok=True)
        budget = hp.values.get("tuner/epochs")
        train = self.hypermodel.train_config(hp, epochs=budget)
        keras.utils.set_random_seed(self.seed)
        model = self.hypermodel.build(hp)
        transfer = self.hypermodel.transfer_config(hp)
        if transfer is None:
            histories = [fit(model, train, data, seed=self.seed, verbose=verbose)]
        else:  # frozen layers first, as `tfopt run` trains a transfer: baseline
            histories = fit_transfer(
                model,
                train,
                data,
                unfreeze_at_epoch=transfer["unfreeze_at_epoch"],
                seed=self.seed,
                verbose=verbose,
            )
        val = float(model.evaluate(*data.val, verbose=0)[1])
        test = float(model.evaluate(*data.test, verbose=0)[1]) if len(data.x_test) else None
        model.save(trial_dir / "model.keras")
        record = {
            "trial_id": trial.trial_id,
            "values": {k: v for k, v in hp.values.items()},
            "train": train.model_dump(),
            "model_options": self.hypermodel.model_options(hp),
            "transfer": transfer,
            "val_accuracy": val,
            "test_accuracy": test,
            "epochs_trained": sum(len(h.history.get("loss", [])) for h in histories),
            "seconds": round(time.perf_counter() - started, 2),
            "started_at": started_at,
            "finished_at": time.time(),
            "tuner_id": self.tuner_id,
            "status": "COMPLETED",
        }
        (trial_dir / "tfopt.json").write_text(json.dumps(record, indent=2, default=str))
        write_trial(self.log_dir, trial.trial_id, hp.values, record, names=METRICS)
        if self.on_trial_done is not None:
            self.on_trial_done(record)
        return {"val_accuracy": val}

    def save_model(self, trial_id, model, step=0):
        model.save(Path(self.get_trial_dir(trial_id)) / "model.keras")

    def load_model(self, trial):
        """The trained model of a trial (``trial_<id>/model.keras``)."""
        from tfopt.models import load

        return load(Path(self.get_trial_dir(trial.trial_id)) / "model.keras")

    def serve(self, host: str, port: int, *, poll: float = 0.25) -> None:
        """Serves the oracle to workers over gRPC until the search ends (`_distributed.serve`)."""
        from tfopt.tune._distributed import serve

        serve(self, host, port, poll=poll)
