"""Training-side tools: distributed training, transfer learning, ensembles.

- `make_strategy`: the ``tf.distribute`` strategy of ``train.strategy`` (``mirrored``,
  ``multi_worker``); build and compile models in ``strategy.scope()``.
- `transfer` / `fit_transfer`: copy a trained model with a new head, freeze its first layers,
  unfreeze them on a schedule.
- `train_ensemble` / `ensemble_model` / `ensemble_accuracy`: K members, their averaged
  probabilities as one model (a teacher for `tfopt.distill.Distiller`).
"""

from tfopt.train._ensemble import ensemble_accuracy, ensemble_model, train_ensemble
from tfopt.train._strategy import (
    STRATEGIES,
    check_strategy,
    is_chief,
    make_strategy,
    prepare_fit,
    scope,
)
from tfopt.train._transfer import (
    HEADS,
    check_freeze_until,
    fit_transfer,
    freeze,
    transfer,
    unfreeze,
)

__all__ = [
    "HEADS",
    "STRATEGIES",
    "check_freeze_until",
    "check_strategy",
    "ensemble_accuracy",
    "ensemble_model",
    "fit_transfer",
    "freeze",
    "is_chief",
    "make_strategy",
    "prepare_fit",
    "scope",
    "train_ensemble",
    "transfer",
    "unfreeze",
]
