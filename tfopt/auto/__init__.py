"""The automatic optimizer ("the agent"): the smallest or fastest artifact within an accuracy budget.

`optimize` searches compression recipes (channel pruning, magnitude pruning, clustering, QAT/PTQ,
distillation from the float model, and their hyperparameters) with KerasTuner, starting from
the unchanged model in int8 and from per-layer recipes a sensitivity pass derives, then refines the most promising small candidates with longer fine-tuning and
distillation, and measures every candidate through its exported TFLite file. It selects on the
validation data only (paired with the baseline on the same samples; test data, when given, is
measured and reported with its paired 95% interval). The first candidate is the unchanged model in
int8, so even a one-trial search returns a deployable model when int8 fits. It keeps the
Pareto front (accuracy vs size vs latency), saves the best artifact so far and a report after every
trial, and resumes an interrupted search. The CLI is ``tfopt auto [CONFIG] --max-accuracy-drop X``.

Example:
    >>> res = tfopt.auto.optimize(model, train=ds.train, val=ds.val, test=ds.test,
    ...                           max_accuracy_drop=0.005, time_budget=1200, out_dir="runs/auto")
    >>> res.best_path, res.ratio, res.recipe   # recipe.yaml: `tfopt run` replays the best
"""

from tfopt._budget import Budget
from tfopt.auto._candidate import Candidate, select_best, split_resolution
from tfopt.auto._optimize import AUTO_OBJECTIVES, AutoResult, check_budget, optimize
from tfopt.auto._oracle import AutoOracle
from tfopt.auto._pareto import DEFAULT_OBJECTIVES, dominates, pareto_front
from tfopt.auto._refine import (
    REFINE_EPOCHS,
    REFINE_MARGIN,
    REFINE_SHARE,
    refine_queue,
    refine_recipe,
)
from tfopt.auto._report import write_report
from tfopt.auto._search import KNOWN_GOOD, SAFE_FIRST, default_seeds

__all__ = [
    "AUTO_OBJECTIVES",
    "DEFAULT_OBJECTIVES",
    "KNOWN_GOOD",
    "REFINE_EPOCHS",
    "REFINE_MARGIN",
    "REFINE_SHARE",
    "SAFE_FIRST",
    "AutoOracle",
    "AutoResult",
    "Budget",
    "Candidate",
    "check_budget",
    "default_seeds",
    "dominates",
    "optimize",
    "pareto_front",
    "refine_queue",
    "refine_recipe",
    "select_best",
    "split_resolution",
    "write_report",
]
