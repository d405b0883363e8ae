"""The automatic optimizer: search compression recipes under an accuracy budget."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfopt._backend import check_model
from tfopt.auto._pareto import pareto_front
from tfopt.auto._report import write_json, write_report
from tfopt.tune._space import TARGETS, CompressionHyperModel
from tfopt.tune._tuner import (
    SeededBayesianOptimizationOracle,
    Tuner,
)

AUTO_OBJECTIVES = ("size", "latency")

# Known-good recipes, tried first (in this order); keys of techniques that are not available are
# dropped. They follow what works on small CNNs (and what earlier searches put on the size/accuracy
# front): channel pruning of the wide Dense layer (or of all layers) + high magnitude sparsity of the
# large layers + int8 QAT, fine-tuned with distillation from the float model at a low temperature;
# then recipes without distillation, and clustering (then int8 post-training quantization, which
# keeps the clusters).
_DISTILL = {"distill": True, "temperature": 2.0, "alpha": 0.1, "ft_learning_rate": 2e-3}
KNOWN_GOOD: tuple[dict, ...] = (
    {"channel_ratio": 0.5, "channel_scope": "dense", "sparsity": 0.9, "quantization": "qat",
     **_DISTILL, "ft_epochs": 16},
    {"channel_ratio": 0.5, "channel_scope": "dense", "sparsity": 0.95, "quantization": "qat",
     **_DISTILL, "ft_epochs": 16},
    {"channel_ratio": 0.5, "channel_scope": "all", "sparsity": 0.8, "quantization": "qat",
     **_DISTILL, "ft_epochs": 16},
    {"channel_ratio": 0.75, "channel_scope": "dense", "sparsity": 0.85, "quantization": "qat",
     **_DISTILL, "ft_epochs": 16},
    {"sparsity": 0.9, "quantization": "qat", "distill": False, "ft_epochs": 12},
    {"sparsity": 0.8, "clusters": 8, "distill": False, "ft_epochs": 12},
    {"channel_ratio": 0.5, "channel_scope": "dense", "sparsity": 0.9, "clusters": 16,
     **_DISTILL, "ft_epochs": 16},
)  # fmt: skip

# The refinement stage (search-then-train-final): the screening trials fine-tune briefly, so the
# smallest candidates near the budget are re-run with REFINE_EPOCHS times the fine-tuning epochs and
# distillation from the float model. Candidates up to REFINE_MARGIN past the budget (on val) qualify:
# short fine-tunes typically leave 1-3 points that a longer one recovers. With a time budget, the
# last REFINE_SHARE of it is kept for refinement.
REFINE_EPOCHS = 3
REFINE_MARGIN = 0.03
REFINE_SHARE = 0.5
REFINE_DISTILL = {"temperature": 2.0, "alpha": 0.1}  # for recipes that did not distill already


class _Stop(Exception):
    """Raised between trials to end the search (time budget)."""


@dataclass
class AutoResult:
    """What `optimize` found. ``best`` is None when no candidate met the budget."""

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

    @property
    def ratio(self) -> float | None:
        """Baseline TFLite bytes / best artifact gzip bytes."""
        return None if self.best is None else self.best["ratio"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best_path"] = None if self.best_path is None else str(self.best_path)
        d["report"] = {k: str(v) for k, v in self.report.items()}
        d["out_dir"] = str(self.out_dir)
        return d


class _AutoTuner(Tuner):
    """`Tuner` that stops between trials when the next one would overrun the deadline."""

    deadline: float | None = None
    durations: list[float]

    def pre_create_trial(self):
        if self.deadline is None:
            return
        typical = statistics.median(self.durations) if self.durations else 0.0
        if time.monotonic() + typical > self.deadline:
            raise _Stop("time_budget")


def default_seeds(hypermodel: CompressionHyperModel) -> list[dict]:
    """The known-good recipes restricted to ``hypermodel``'s space, deduplicated, in order."""
    names = set(hypermodel.hyperparameter_names())
    seeds, seen = [], set()
    for recipe in KNOWN_GOOD:
        s = {k: v for k, v in recipe.items() if k in names}
        key = tuple(sorted(s.items()))
        if s and key not in seen:
            seen.add(key)
            seeds.append(s)
    return seeds


def refine_recipe(recipe: dict, techniques: Sequence[str]) -> dict:
    """The refinement of a screened ``recipe``: `REFINE_EPOCHS` times the fine-tuning epochs and,
    when ``"distill"`` is among ``techniques``, distillation from the float model."""
    out = dict(recipe)
    out["epochs"] = REFINE_EPOCHS * int(recipe.get("epochs", 8))
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

    A candidate qualifies when it completed, no candidate with its stages was refined yet, it
    loses at most ``max_accuracy_drop + margin`` on val, and it is smaller (by ``key``) than
    ``best``. Of candidates with the same stages, only the most accurate one is kept (refining one
    structure twice would only add chances of a lucky val score). They are ranked by ``key``
    times two per point over the budget: refinement recovers some accuracy, not all of it.

    Args:
        candidates: the search's candidates (dicts with ``status``, ``stages``, ``val_accuracy``,
            ``key``; refined ones carry ``refined_from``).
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


def check_budget(max_accuracy_drop) -> float:
    """Raises ValueError unless ``max_accuracy_drop`` is a fraction in [0, 1)."""
    ok = isinstance(max_accuracy_drop, int | float) and not isinstance(max_accuracy_drop, bool)
    if not (ok and 0.0 <= max_accuracy_drop < 1.0):
        raise ValueError(
            f"max_accuracy_drop must be a fraction in [0, 1) (0.005 = half a point). "
            f"Received: max_accuracy_drop={max_accuracy_drop!r}"
        )
    return float(max_accuracy_drop)


def _check_data(name: str, data) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(
            f"{name} must be an (x, y) pair of arrays. Received: {name}={type(data).__name__}"
        )
    x, y = np.asarray(data[0], dtype="float32"), np.asarray(data[1]).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"{name} must hold the same non-zero number of inputs and labels. Received: "
            f"{len(x)} inputs and {len(y)} labels"
        )
    return x, y


def _measure_baseline(model, out_dir: Path, val, test, representative) -> dict:
    from tfopt import bench, export

    path = out_dir / "baseline.tflite"
    art = export.tflite(model, path, quantization="float32", check_data=representative[:256])
    res = bench.benchmark(str(path), data=val, warmup=5, runs=50)
    return {
        "artifact": str(path),
        "format": art.format,
        "bytes": int(res.bytes),
        "gzip_bytes": int(res.gzip_bytes),
        "val_accuracy": float(res.accuracy),
        "test_accuracy": None if test is None else float(bench.evaluate(str(path), test)),
        "latency_ms": float(res.latency_ms["p50"]),
        "params": int(model.count_params()),
    }


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def optimize(
    model,
    train,
    val,
    *,
    test=None,
    max_accuracy_drop: float,
    target: str = "tflite-int8",
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
    verbose: int = 1,
    log: Callable[[str], None] = print,
) -> AutoResult:
    """Finds the smallest (or fastest) deployable artifact within an accuracy budget.

    The float ``model`` is exported to a float32 TFLite file and measured through it (the
    baseline). Then compression recipes (channel pruning, magnitude pruning, clustering, QAT or
    PTQ, each stage fine-tuned with optional distillation from the float model) are screened with
    short fine-tunes: first known-good recipes (`KNOWN_GOOD`), then KerasTuner's Bayesian
    optimization. A refinement stage follows: the most promising small candidates within
    `REFINE_MARGIN` of the budget (see `refine_queue`) are re-run with `REFINE_EPOCHS` times the
    fine-tuning and distillation from the float model (`refine_recipe`). Every candidate is
    exported to ``target`` and measured *through the exported file*: accuracy on ``val`` (and
    ``test`` when given), gzip size, latency.

    Selection uses ``val`` only: a candidate is within budget when its val accuracy is at most
    ``max_accuracy_drop`` below the baseline's (measured the same way), and the best is the smallest
    (or fastest) refined candidate within budget, or, while there is none, the smallest screened
    one (the smallest of many short, noisy screens tends to owe its place to a lucky val score).
    ``test`` is measured and reported, never used to choose, so its drop is an independent check
    of the choice. After every trial the best artifact so far is copied to
    ``out_dir/best.tflite`` and the report (``report.json``, ``report.md``, ``pareto.png`` with the
    Pareto front of accuracy vs size vs latency) is rewritten, so an interrupted run (Ctrl-C, time
    budget) leaves a complete report; running again with the same ``out_dir`` resumes the search.

    Args:
        model: the trained float Keras 3 model (not modified).
        train: ``(x, y)`` fine-tuning data (also the calibration data).
        val: ``(x, y)`` held-out data the search measures and selects on.
        test: ``(x, y)`` held-out data measured and reported for every candidate, never used for
            selection. Defaults to None.
        max_accuracy_drop: the allowed accuracy drop on ``val``, a fraction (0.005 = half a point).
        target: the artifact format, one of ``tfopt.tune.TARGETS``. Defaults to "tflite-int8".
        objective: ``"size"`` (gzip bytes) or ``"latency"`` (p50). Defaults to "size".
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
        overwrite: discard a previous search in ``out_dir`` instead of resuming it. Defaults to
            False.
        seed: the search's random seed. Defaults to 0.
        verbose: 1 prints one line per trial, 0 is silent. Defaults to 1.
        log: where progress lines go. Defaults to print.

    Returns:
        An `AutoResult`: the baseline, every candidate (refined ones have ``phase="refine"`` and
        ``refined_from``), the Pareto front, the best candidate (or None) and the report's paths.

    Raises:
        ValueError: an argument out of range (named in the message).
        TypeError: ``model`` is not a Keras 3 model.

    Example:
        >>> res = tfopt.auto.optimize(model, train=ds.train, val=ds.val, test=ds.test,
        ...                           max_accuracy_drop=0.005, max_trials=10, out_dir="runs/auto")
        >>> res.best["gzip_bytes"], res.ratio
    """
    check_model(model)
    check_budget(max_accuracy_drop)
    if target not in TARGETS:
        raise ValueError(f"Unrecognized target={target!r}. Supported targets are: {list(TARGETS)}")
    if objective not in AUTO_OBJECTIVES:
        raise ValueError(
            f"Unrecognized objective={objective!r}. Supported objectives are: {list(AUTO_OBJECTIVES)}"
        )
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be > 0 seconds. Received: time_budget={time_budget!r}")
    if max_trials is not None and (isinstance(max_trials, bool) or int(max_trials) < 1):
        raise ValueError(f"max_trials must be >= 1. Received: max_trials={max_trials!r}")
    if refine is not None and (
        isinstance(refine, bool) or not isinstance(refine, int) or refine < 0
    ):
        raise ValueError(f"refine must be an int >= 0. Received: refine={refine!r}")
    train = _check_data("train", train)
    val = _check_data("val", val)
    test = None if test is None else _check_data("test", test)
    if max_trials is None and time_budget is None:
        max_trials = 20
    if refine is None and time_budget is None:
        refine = max(1, int(max_trials) // 5)
    started = time.monotonic()
    out_dir = Path(out_dir)
    if overwrite and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if verbose:
            log(msg)

    representative = train[0][:200]
    baseline = _measure_baseline(model, out_dir, val, test, representative)
    write_json(out_dir / "baseline.json", baseline)
    say(
        f"[auto] baseline (float32 TFLite): {baseline['bytes']} bytes, val acc "
        f"{baseline['val_accuracy']:.4f}"
        + (f", test acc {baseline['test_accuracy']:.4f}" if test is not None else "")
        + f"; budget: -{100 * max_accuracy_drop:.2f} pt on val"
        + (" (test is measured, not used to select)" if test is not None else "")
    )

    hypermodel = CompressionHyperModel(
        model=model, techniques=techniques, target=target, space=space
    )
    seeds = default_seeds(hypermodel) if seeds is None else list(seeds)
    size_key = "gzip_bytes" if objective == "size" else "latency_ms"
    state = {
        "candidates": {},
        "best": None,
        "stopped": "max_trials",
        "report": {},
        "refinement": {"runs": 0, "stopped": "not_started", "limit": refine},
    }

    def within(c: dict) -> bool:  # val only: the test data never takes part in selection
        return baseline["val_accuracy"] - c["val_accuracy"] <= max_accuracy_drop + 1e-12

    def candidate(record: dict) -> dict:
        m = record.get("metrics") or {}
        c = {
            "trial_id": record["trial_id"],
            "phase": "refine" if record.get("refined_from") else "search",
            "refined_from": record.get("refined_from"),
            "status": record["status"],
            "recipe": record.get("recipe"),
            "stages": record.get("stages") or [],
            "seconds": float(record.get("seconds", 0.0)),
            "error": record.get("error"),
            "keras_model": record.get("keras_model"),
        }
        if record["status"] == "COMPLETED":
            c.update(
                {
                    k: m.get(k)
                    for k in (
                        "val_accuracy",
                        "test_accuracy",
                        "bytes",
                        "gzip_bytes",
                        "latency_ms",
                        "score",
                    )
                }
            )
            c["artifact"] = m.get("path")
            c["ratio"] = baseline["bytes"] / max(1, c["gzip_bytes"])
            c["within_budget"] = within(c)
            c["test_drop"] = (
                None
                if c.get("test_accuracy") is None
                else baseline["test_accuracy"] - c["test_accuracy"]
            )
            c["kernel_sparsity"] = (record.get("facts") or {}).get("kernel_sparsity")
        return c

    def pick_best(done: list[dict]) -> dict | None:
        ok = [c for c in done if c["within_budget"]]
        # Refined candidates are final (fully fine-tuned, few of them); screened ones count only
        # while no refined candidate is within budget. Picking the smallest of ~100 short, noisy
        # screens on val favours lucky val scores (the winner's curse).
        ok = [c for c in ok if c["phase"] == "refine"] or ok
        return (
            min(ok, key=lambda c: (c[size_key], -c["val_accuracy"], c["trial_id"])) if ok else None
        )

    def save_state(stopped: str) -> None:
        cands = sorted(state["candidates"].values(), key=lambda c: c["trial_id"])
        done = [c for c in cands if c["status"] == "COMPLETED"]
        points = [
            {
                "accuracy": c["val_accuracy"],
                "gzip_bytes": c["gzip_bytes"],
                "latency_ms": c["latency_ms"],
            }
            for c in done
        ]
        front = [done[i]["trial_id"] for i in pareto_front(points)] if done else []
        best = pick_best(done)
        if best is not None and (
            state["best"] is None or state["best"]["trial_id"] != best["trial_id"]
        ):
            shutil.copyfile(best["artifact"], out_dir / "best.tflite")
            if best.get("keras_model"):
                shutil.copyfile(best["keras_model"], out_dir / "best.keras")
            else:
                (out_dir / "best.keras").unlink(missing_ok=True)
        if best is None:
            for stale in ("best.tflite", "best.keras"):
                (out_dir / stale).unlink(missing_ok=True)
        state["best"] = best
        closest = max(done, key=lambda c: c["val_accuracy"]) if done else None
        data = {
            "name": out_dir.name,
            "target": target,
            "objective": objective,
            "max_accuracy_drop": max_accuracy_drop,
            "baseline": baseline,
            "best": None if best is None else {**best, "artifact": str(out_dir / "best.tflite")},
            "closest": closest,
            "front": front,
            "candidates": cands,
            "trials_completed": len(done),
            "trials_failed": len(cands) - len(done),
            "stopped": stopped,
            "elapsed_s": time.monotonic() - started,
            "techniques": list(hypermodel.techniques),
            "missing_techniques": list(hypermodel.missing_techniques),
            "seeds": seeds,
            "refinement": {
                **state["refinement"],
                "epochs_factor": REFINE_EPOCHS,
                "margin": REFINE_MARGIN,
                "distill": "distill" in hypermodel.techniques,
            },
            "selection": f"val accuracy within budget, then smallest {size_key} (refined "
            "candidates first)"
            + ("; test accuracy is measured and reported only" if test is not None else ""),
        }
        state["report"] = write_report(out_dir, data)
        state["data"] = data

    def progress(c: dict) -> None:
        if c["status"] != "COMPLETED":
            err = (c.get("error") or "").splitlines()[0][:140]
            say(f"[auto] trial {c['trial_id']}  FAILED  {err}  [{_fmt_time(c['seconds'])}]")
            return
        best = state["best"]
        drop = 100 * (c["val_accuracy"] - baseline["val_accuracy"])
        test_part = ""
        if c.get("test_accuracy") is not None:
            test_part = (
                f" test {c['test_accuracy']:.4f} "
                f"({100 * (c['test_accuracy'] - baseline['test_accuracy']):+.2f})"
            )
        origin = f" (refines {c['refined_from']})" if c.get("refined_from") else ""
        say(
            f"[auto] trial {c['trial_id']}  {' + '.join(c['stages']) or 'none':<42}{origin} val "
            f"{c['val_accuracy']:.4f} ({drop:+.2f}){test_part}  gzip {c['gzip_bytes'] / 1024:.1f} KB "
            f"({c['ratio']:.1f}x)  p50 {c['latency_ms']:.3f} ms  "
            f"{'within budget' if c['within_budget'] else 'over budget  '}  best: "
            + (f"{best['trial_id']} {best['gzip_bytes'] / 1024:.1f} KB" if best else "none")
            + f"  [{_fmt_time(c['seconds'])}, total {_fmt_time(time.monotonic() - started)}]"
        )

    def on_trial_done(trial_id: str, record: dict) -> None:
        c = candidate(record)
        state["candidates"][trial_id] = c
        tuner.durations.append(c["seconds"])
        save_state("running")
        progress(c)

    oracle = SeededBayesianOptimizationOracle(
        objective=_objective(),
        max_trials=max_trials or 999,
        num_initial_points=max(2, len(seeds)),  # then the Gaussian process proposes
        seeds=seeds,
        seed=seed,
        max_consecutive_failed_trials=8,
    )
    tuner = _AutoTuner(
        oracle,
        hypermodel,
        epochs=0,
        objective=objective,
        baseline_accuracy=baseline["val_accuracy"],
        max_accuracy_drop=max_accuracy_drop,
        on_trial_done=on_trial_done,
        save_models=True,
        directory=str(out_dir),
        project_name="search",
        overwrite=False,
    )
    tuner.durations = []
    refine_dir = out_dir / "refine"
    earlier = tuner.records() + [
        json.loads(p.read_text()) for p in sorted(refine_dir.glob("r*/tfopt.json"))
    ]
    for record in earlier:  # trials of an earlier, resumed run
        state["candidates"][record["trial_id"]] = candidate(record)
    if state["candidates"]:
        say(f"[auto] resuming: {len(state['candidates'])} trial(s) already done in {out_dir}")
    deadline = None if time_budget is None else started + float(time_budget)
    if deadline is not None:
        share = 0.0 if refine == 0 else REFINE_SHARE
        tuner.deadline = started + (1.0 - share) * float(time_budget)
    import keras_tuner.src.config as kt_config

    def screen() -> str:
        """Runs screening trials until the tuner's deadline; returns why the search ended."""
        try:
            tuner.search(train, val, test=test, teacher=model, verbose=0)
        except _Stop as e:
            return str(e)
        except KeyboardInterrupt:
            say("[auto] interrupted: writing the report with the trials done so far")
            return "interrupted"
        except RuntimeError as e:
            if "consecutive failures" not in str(e):
                raise
            say(f"[auto] stopping: {str(e).splitlines()[0]}")
            return "too_many_failures"
        if max_trials is None or len(tuner.oracle.trials) < max_trials:
            return "search_space_exhausted"
        return "max_trials"

    debug, kt_config.DEBUG = kt_config.DEBUG, False  # failures go to the report, not tracebacks
    try:
        while True:
            stopped = screen()
            save_state(stopped)
            if stopped == "interrupted" or refine == 0:
                break
            outcome = _refine_stage(
                model=model,
                train=train,
                val=val,
                test=test,
                target=target,
                techniques=hypermodel.techniques,
                refine_dir=refine_dir,
                state=state,
                candidate=candidate,
                save_state=save_state,
                progress=progress,
                say=say,
                stopped=stopped,
                limit=refine,
                deadline=deadline,
                baseline_accuracy=baseline["val_accuracy"],
                max_accuracy_drop=max_accuracy_drop,
                size_key=size_key,
                seed=seed,
            )
            if outcome in ("interrupted", "time_budget"):
                stopped = outcome
                break
            # Nothing left to refine while the time budget still has room: screen more recipes
            # (the search's share of what is left), then refine again.
            if stopped != "time_budget" or outcome != "done":
                break
            left = deadline - time.monotonic()
            typical = statistics.median(tuner.durations) if tuner.durations else 0.0
            if left < 2 * (1 + REFINE_EPOCHS) * typical:
                break
            say(f"[auto] nothing left to refine with {_fmt_time(left)} to go: screening more")
            tuner.deadline = time.monotonic() + (1.0 - REFINE_SHARE) * left
    finally:
        kt_config.DEBUG = debug
    save_state(stopped)
    best = state["best"]
    if best is None:
        say(
            f"[auto] no candidate within the budget ({stopped}); report: {state['report']['markdown']}"
        )
    else:
        test_part = ""
        if best.get("test_accuracy") is not None:
            test_part = (
                f", test {100 * (best['test_accuracy'] - baseline['test_accuracy']):+.2f} pt "
                "(not used to select)"
            )
        say(
            f"[auto] best: trial {best['trial_id']} ({' + '.join(best['stages'])}) "
            f"{best['gzip_bytes']} gzip bytes = {best['ratio']:.1f}x smaller than the float TFLite; "
            f"val {100 * (best['val_accuracy'] - baseline['val_accuracy']):+.2f} pt{test_part}; "
            f"report: {state['report']['markdown']}"
        )
    return AutoResult(
        baseline=baseline,
        candidates=state["data"]["candidates"],
        front=state["data"]["front"],
        best=state["data"]["best"],
        best_path=None if best is None else out_dir / "best.tflite",
        report=state["report"],
        stopped=stopped,
        elapsed_s=time.monotonic() - started,
        out_dir=out_dir,
        extra={
            "techniques": list(hypermodel.techniques),
            "seeds": seeds,
            "refinement": state["data"]["refinement"],
        },
    )


def _refine_stage(
    *,
    model,
    train,
    val,
    test,
    target,
    techniques,
    refine_dir: Path,
    state: dict,
    candidate,
    save_state,
    progress,
    say,
    stopped: str,
    limit: int | None,
    deadline: float | None,
    baseline_accuracy: float,
    max_accuracy_drop: float,
    size_key: str,
    seed: int,
) -> str:
    """Re-runs the most promising candidates (`refine_queue`) with `refine_recipe`.

    Runs until the queue is empty, ``limit`` refinement runs exist in ``refine_dir``, or the next
    run would likely overrun ``deadline``. Records each run in ``refine_dir/r<k>/tfopt.json`` (a
    resumed run reads them back) and in ``state``. Returns how the stage ended: ``"done"``,
    ``"limit"``, ``"time_budget"`` or ``"interrupted"``.
    """
    from tfopt._backend import import_keras
    from tfopt.tune._compress import compress
    from tfopt.tune._measure import export_and_measure

    keras = import_keras()
    info = state["refinement"]
    durations: list[float] = []
    outcome = "done"
    try:
        while True:
            cands = list(state["candidates"].values())
            runs = [c for c in cands if c.get("refined_from")]
            info["runs"] = len(runs)
            if limit is not None and len(runs) >= limit:
                outcome = "limit"
                break
            best = state["best"]
            queue = refine_queue(
                cands,
                baseline_accuracy,
                max_accuracy_drop,
                key=size_key,
                best=best if best is not None and best["phase"] == "refine" else None,
            )
            if not queue:
                break
            source = queue[0]
            recipe = refine_recipe(source["recipe"], techniques)
            if deadline is not None:
                typical = (
                    statistics.median(durations)
                    if durations
                    else REFINE_EPOCHS * float(source["seconds"])
                )
                if time.monotonic() + typical > deadline:
                    outcome = "time_budget"
                    break
            if not runs:
                say(
                    f"[auto] refinement: {len(queue)} candidate(s) within "
                    f"{100 * REFINE_MARGIN:.0f} pt of the budget; re-running the most promising "
                    f"with {REFINE_EPOCHS}x the fine-tuning"
                    + (" and distillation" if "distill" in techniques else "")
                )
            rid = f"r{len(runs):03d}"
            run_dir = refine_dir / rid
            run_dir.mkdir(parents=True, exist_ok=True)
            record = {
                "trial_id": rid,
                "refined_from": source["trial_id"],
                "recipe": recipe,
                "status": "RUNNING",
            }
            t0 = time.perf_counter()
            keras.utils.set_random_seed(seed + len(runs) + 1)
            try:
                result = compress(model, recipe, train, val, teacher=model, target=target)
                record["stages"] = result.stages
                record["facts"] = result.facts
                record["metrics"] = export_and_measure(
                    result.model,
                    run_dir / "model.tflite",
                    quantization=result.quantization,
                    representative=train[0][:200],
                    val=val,
                    test=test,
                )
                record["status"] = "COMPLETED"
                try:
                    result.model.save(run_dir / "model.keras")
                    record["keras_model"] = str(run_dir / "model.keras")
                except Exception as e:  # an unsaveable wrapper must not fail the run
                    record["keras_model_error"] = f"{type(e).__name__}: {e}"
            except Exception as e:  # a failed refinement is recorded; the stage goes on
                record.update(status="FAILED", error=f"{type(e).__name__}: {e}")
            record["seconds"] = time.perf_counter() - t0
            durations.append(record["seconds"])
            (run_dir / "tfopt.json").write_text(json.dumps(record, indent=2, default=str))
            c = candidate(record)
            state["candidates"][rid] = c
            info["runs"] = len(runs) + 1
            save_state(stopped)
            progress(c)
    except KeyboardInterrupt:
        outcome = "interrupted"
        say("[auto] interrupted: writing the report with the trials done so far")
    info["stopped"] = outcome
    return outcome


def _objective():
    import keras_tuner

    return keras_tuner.Objective("score", "max")
