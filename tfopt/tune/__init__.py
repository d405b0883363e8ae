"""Hyperparameter search with KerasTuner: the training recipe (`search_training`, `tfopt tune`) and
compression recipes measured through the exported TFLite artifact (`CompressionHyperModel`).

`search_training` searches optimizer, learning-rate schedule, batch size, epochs with early
stopping, weight decay, label smoothing, augmentation and the zoo builder's width/depth
(`TrainingHyperModel`, what to try) with `TrainingTuner` (how a trial runs), and writes the best
model, a `tfopt run` config that retrains it, and a report. See `tfopt.tune._search_training`.

The search space (`CompressionHyperModel`: learning rate, batch size, dropout, L2, width/depth,
target sparsity, pruning schedule, QAT vs PTQ, clustering, distillation temperature/alpha) is kept
apart from running a trial (`Tuner.run_trial`: train, run the recipe stages, export, measure). A
trial's hyperparameters become `tfopt run` step configs (`recipe_steps`), run by the same recipe
engine as `tfopt run`, so every trial is a config that `tfopt run` replays. Objectives combine
accuracy with the artifact's measured gzip size and latency (`score`). A candidate that fails to
export is a failed trial, not a dead search; a search resumes from its directory after the process
is killed (``overwrite=False``); every trial is logged to TensorBoard's hparams plugin.

Distributed search uses KerasTuner's chief/worker mode: run the same script once with
``KERASTUNER_TUNER_ID=chief`` (it serves the oracle over gRPC and runs no trials) and once per worker
with ``KERASTUNER_TUNER_ID=tuner0``, ``tuner1``, ..., all with ``KERASTUNER_ORACLE_IP`` /
``KERASTUNER_ORACLE_PORT`` set to the chief's address (e.g. ``127.0.0.1`` / ``8000``) and the same
``directory``.

Example:
    >>> hm = tfopt.tune.CompressionHyperModel(builder="mnist1d_cnn", space={"sparsity": [0.5, 0.8]})
    >>> tuner = tfopt.tune.create_tuner(hm, kind="bayesian", max_trials=8, directory="runs/tune",
    ...                                 objective="accuracy", size_weight=0.01)
    >>> tuner.search(ds.train, ds.val, test=ds.test)
    >>> best = tuner.oracle.get_best_trials(1)[0]
"""

from tfopt import _tensorflow  # noqa: F401 - first: TensorFlow starts quietly
from tfopt.export._measure import ExportFailed, export_and_measure
from tfopt.tune._recipe import TECHNIQUES, available_techniques, describe, recipe_steps
from tfopt.tune._search_training import TuneResult, search_training
from tfopt.tune._space import TARGETS, CompressionHyperModel
from tfopt.tune._training_space import DEFAULT_SPACE, TrainingHyperModel, training_space_names
from tfopt.tune._training_tuner import ALGORITHMS, TrainingTuner, make_oracle
from tfopt.tune._tuner import (
    KINDS,
    OBJECTIVES,
    SeededBayesianOptimizationOracle,
    SeededRandomSearchOracle,
    Tuner,
    create_tuner,
    run_candidate,
    score,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_SPACE",
    "TrainingHyperModel",
    "TrainingTuner",
    "TuneResult",
    "make_oracle",
    "search_training",
    "training_space_names",
    "KINDS",
    "OBJECTIVES",
    "TARGETS",
    "TECHNIQUES",
    "CompressionHyperModel",
    "ExportFailed",
    "SeededBayesianOptimizationOracle",
    "SeededRandomSearchOracle",
    "Tuner",
    "available_techniques",
    "create_tuner",
    "describe",
    "export_and_measure",
    "recipe_steps",
    "run_candidate",
    "score",
]
