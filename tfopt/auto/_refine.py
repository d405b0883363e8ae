"""The refinement stage of `tfopt.auto` (search-then-train-final).

The screening trials fine-tune briefly, so the smallest candidates near the budget are re-run with
`REFINE_EPOCHS` times the fine-tuning epochs and distillation from the float model. Candidates up
to `REFINE_MARGIN` past the budget (on val) qualify: short fine-tunes typically leave 1-3 points
that a longer one recovers. With a time budget, the last `REFINE_SHARE` of it is kept for
refinement. A refinement run is a recipe like any other: `refine_recipe` changes the flat search
values, `tfopt.tune.recipe_steps` turns them into `tfopt run` steps, `tfopt.tune.run_candidate`
runs them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from tfopt import _rundir

REFINE_EPOCHS = 3
REFINE_MARGIN = 0.03
REFINE_SHARE = 0.5
REFINE_DISTILL = {"temperature": 2.0, "alpha": 0.1}  # for recipes that did not distill already


def refine_recipe(recipe: dict, techniques: Sequence[str], screened: float = 1.0) -> dict:
    """The refinement of a screened ``recipe``: `REFINE_EPOCHS` times its fine-tuning steps, on
    all the training samples, and, when ``"distill"`` is among ``techniques``, distillation from
    the float model.

    ``screened`` is the fraction of the training set the screening fine-tuned on: the epochs over
    the whole set are scaled by it, so that a refinement costs `REFINE_EPOCHS` screening trials
    whatever the set's size (3x the epochs of 54,000 Fashion-MNIST images instead of the 8,192
    screened would be 20 screening trials, more than an hour on 2 cores).
    """
    out = dict(recipe)
    epochs = REFINE_EPOCHS * int(recipe.get("epochs", 8)) * min(1.0, float(screened))
    out["epochs"] = max(1, math.ceil(epochs - 1e-9))
    if "distill" in techniques and not recipe.get("distill"):
        out.update(distill=True, **REFINE_DISTILL)
    return out


def refine_queue(
    candidates: Sequence[dict],
    baseline_accuracy: float,
    max_accuracy_drop: float,
    *,
    key: str = "gzip_bytes",
    best: dict | None = None,
    margin: float = REFINE_MARGIN,
) -> list[dict]:
    """The screened candidates worth refining, most promising first.

    A candidate qualifies when it completed, has stages that fine-tune (``steps``; a
    post-training-only candidate has none), no candidate with its stages was refined yet, it
    loses at most ``max_accuracy_drop + margin`` on val, and it is smaller (by ``key``) than
    ``best``. Of candidates with the same stages, only the most accurate one is kept (refining one
    structure twice would only add chances of a lucky val score). They are ranked by ``key``
    times two per point over the budget: refinement recovers some accuracy, not all of it.

    Args:
        candidates: the search's candidates as dicts (`Candidate.to_dict`: ``status``, ``stages``,
            ``val_accuracy``, ``key``; refined ones carry ``refined_from``; ``rejected`` ones,
            over a RAM / flash budget, are skipped).
        baseline_accuracy: the float baseline's val accuracy.
        max_accuracy_drop: the budget (a fraction).
        key: the objective's measurement, ``"gzip_bytes"`` or ``"latency_ms"``. Defaults to
            "gzip_bytes".
        best: the best refined candidate within budget so far: only smaller ones are worth
            refining. Defaults to None.
        margin: how far past the budget a candidate may be. Defaults to `REFINE_MARGIN`.

    Returns:
        The candidates to refine, in order.
    """
    by_id = {c["trial_id"]: c for c in candidates}
    done = {
        tuple(by_id[c["refined_from"]]["stages"])
        for c in candidates
        if c.get("refined_from") in by_id
    }
    groups: dict[tuple, dict] = {}
    for c in candidates:
        if c["status"] != "COMPLETED" or c.get("refined_from") or tuple(c["stages"]) in done:
            continue
        if "steps" in c and not c["steps"]:  # post-training only: nothing to fine-tune longer
            continue
        if c.get("rejected") or c.get(key) is None:  # over a RAM / flash budget: fine-tuning
            continue  # longer does not shrink it
        drop = baseline_accuracy - c["val_accuracy"]
        if drop > max_accuracy_drop + margin + 1e-12:
            continue
        if best is not None and not c[key] < best[key]:
            continue
        group = tuple(c["stages"])
        if group not in groups or c["val_accuracy"] > groups[group]["val_accuracy"]:
            groups[group] = c

    def rank(c):
        excess = max(0.0, baseline_accuracy - c["val_accuracy"] - max_accuracy_drop)
        return (c[key] * 2.0 ** (100.0 * excess), c["trial_id"])

    return sorted(groups.values(), key=rank)


def refinement_run(
    model,
    source: dict,
    *,
    run_id: str,
    run_dir: Path,
    techniques: Sequence[str],
    target: str,
    train,
    val,
    test=None,
    seed: int | None = None,
    robust_epsilon: float | None = None,
    screened: float = 1.0,
) -> dict:
    """Runs the refinement of ``source`` (a candidate dict) and returns its trial record
    (``screened``: the fraction of ``train`` the screening saw, see `refine_recipe`).

    The record (also written to ``run_dir/tfopt.json``, which a resumed search reads back) has the
    shape of a `tfopt.tune.Tuner` trial's: ``status`` ``"COMPLETED"``, ``"FAILED"`` (the artifact
    could not be exported) or ``"ERROR"`` (any other exception, with its type and message).
    """
    from tfopt.export._measure import ExportFailed
    from tfopt.tune._recipe import describe, dump_steps, recipe_steps
    from tfopt.tune._tuner import run_candidate

    recipe = refine_recipe(source["recipe"], techniques, screened)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "trial_id": run_id,
        "refined_from": source["trial_id"],
        "recipe": recipe,
        "status": "RUNNING",
    }
    t0 = time.perf_counter()
    try:
        steps = recipe_steps(recipe, target=target)
        record["steps"] = dump_steps(steps)
        record["stages"] = describe(steps, target)
        final, metrics, facts = run_candidate(
            model,
            steps,
            train=train,
            val=val,
            test=test,
            out_dir=run_dir,
            target=target,
            teacher=model,
            seed=seed,
            robust_epsilon=robust_epsilon,
        )
        record.update(status="COMPLETED", metrics=metrics, facts=facts)
    except ExportFailed as e:
        record.update(status="FAILED", error=str(e))
    except Exception as e:  # a bug: recorded and shown in the report; the search goes on
        record.update(status="ERROR", error=f"{type(e).__name__}: {e}")
    if record["status"] == "COMPLETED":
        try:
            _rundir.save_model(final, run_dir / "model.keras")
            record["keras_model"] = str(run_dir / "model.keras")
        except Exception as e:  # a wrapper without a saveable config keeps its artifact
            record["keras_model_error"] = f"{type(e).__name__}: {e}"
    record["seconds"] = time.perf_counter() - t0
    # paths relative to run_dir, with sizes and hashes (checked on resume); written atomically
    _rundir.write_json(run_dir / "tfopt.json", _rundir.seal_record(record, run_dir))
    return record
