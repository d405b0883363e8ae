"""One run of the automatic optimizer: baseline, screening, refinement, selection, outputs.

`Search` owns the candidates (`Candidate`, by trial id) and the best one; the screening is a
KerasTuner search driven by `AutoOracle` (which decides when to stop), the refinement re-runs the
most promising candidates (`tfopt.auto._refine`), `select_best` picks on val, and `save` rewrites
best.tflite, recipe.yaml and the report after every candidate.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from tfopt import _rundir
from tfopt.auto._candidate import SELECTION, Candidate, select_best
from tfopt.auto._oracle import AutoOracle
from tfopt.auto._pareto import front_objectives, pareto_front
from tfopt.auto._recipe import recipe_config, write_recipe
from tfopt.auto._refine import (
    REFINE_EPOCHS,
    REFINE_MARGIN,
    REFINE_SHARE,
    refine_queue,
    refinement_run,
)
from tfopt.auto._report import fmt_time, progress_line, write_json, write_report
from tfopt.tune._recipe import dump_steps, recipe_steps
from tfopt.tune._space import CompressionHyperModel
from tfopt.tune._tuner import Tuner

# Known-good recipes, tried first (in this order); keys of techniques that are not available are
# dropped. They follow what works on small CNNs (and what earlier searches put on the size/accuracy
# front), in the spirit of Deep Compression's stacks: fewer channels in every layer and in the
# wide Dense layer, magnitude sparsity of the large layers, then QAT with 4-bit weights (the
# converter packs them as INT4: on MNIST-1D a pruned int4 file gzips ~25% smaller than the same
# model clustered to 16 values in int8), fine-tuned with distillation from the float model at a
# low temperature; per-layer 4/8 bits by sensitivity (``weight_bits: mixed``); then int8 QAT,
# recipes without distillation, and clustering (then int8 post-training quantization, which
# keeps the clusters).
_DISTILL = {"distill": True, "temperature": 2.0, "alpha": 0.1, "ft_learning_rate": 2e-3}
_INT4 = {"quantization": "qat", "weight_bits": "4", **_DISTILL, "ft_epochs": 16}
KNOWN_GOOD: tuple[dict, ...] = (
    {"channel_ratio": 0.5, "channel_scope": "all_dense", "sparsity": 0.8, **_INT4},
    {"channel_ratio": 0.5, "channel_scope": "all_dense", "sparsity": 0.7, **_INT4},
    {"channel_ratio": 0.5, "channel_scope": "all", "sparsity": 0.8, **_INT4},
    {"channel_ratio": 0.5, "channel_scope": "all_dense", "sparsity": 0.8,
     **{**_INT4, "weight_bits": "mixed"}},
    {"channel_ratio": 0.5, "channel_scope": "dense", "sparsity": 0.9, **_INT4},
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


# Tried first under a RAM or flash budget: a microcontroller stores the flatbuffer raw, so zeros
# from magnitude pruning or shared cluster values save no flash; only fewer channels shrink the
# weights and the activations (and with them TFLite Micro's arena).
KNOWN_GOOD_SMALL: tuple[dict, ...] = (
    {"channel_ratio": 0.5, "channel_scope": "all_dense", "sparsity": 0.0, "clusters": 0,
     "quantization": "qat", **_DISTILL, "ft_epochs": 16},
    {"channel_ratio": 0.75, "channel_scope": "all", "sparsity": 0.0, "clusters": 0,
     "quantization": "qat", **_DISTILL, "ft_epochs": 16},
    # INT4 weights halve the flash; TFLite Micro runs them (Conv2D and FullyConnected)
    {"channel_ratio": 0.5, "channel_scope": "all", "sparsity": 0.0, "clusters": 0, **_INT4},
)  # fmt: skip


def default_seeds(hypermodel: CompressionHyperModel, budgets: dict | None = None) -> list[dict]:
    """The known-good recipes restricted to ``hypermodel``'s space, deduplicated, in order
    (`KNOWN_GOOD_SMALL` instead when ``budgets`` hold a RAM or flash budget: the others are too
    large for a microcontroller's flash)."""
    names = set(hypermodel.hyperparameter_names())
    seeds, seen = [], set()
    small = budgets and any(budgets.get(k) is not None for k in ("max_ram", "max_flash"))
    for recipe in KNOWN_GOOD_SMALL if small else KNOWN_GOOD:
        s = {k: v for k, v in recipe.items() if k in names}
        key = tuple(sorted(s.items()))
        if s and key not in seen:
            seen.add(key)
            seeds.append(s)
    return seeds


def _measure_baseline(model, out_dir: Path, val, test, representative, micro=None) -> dict:
    from tfopt import bench, export

    path = out_dir / "baseline.tflite"
    art = export.tflite(model, path, quantization="float32", check_data=representative[:256])
    res = bench.benchmark(str(path), data=val, warmup=5, runs=50, micro=micro)
    return {
        "artifact": str(path),
        "format": art.format,
        "bytes": int(res.bytes),
        "gzip_bytes": int(res.gzip_bytes),
        "val_accuracy": float(res.accuracy),
        "test_accuracy": None if test is None else float(bench.evaluate(str(path), test)),
        "latency_ms": float(res.latency_ms["p50"]),
        "params": int(model.count_params()),
        # the float32 model in TFLite Micro (a reference for the RAM / flash budgets)
        "arena_bytes": res.arena_bytes,
        "flash_bytes": int(res.bytes),
        "tflm_agreement": res.micro.get("tflm_agreement"),
        "tflm_note": res.micro.get("skipped"),
    }


class Search:
    """One `optimize` call: its settings, its candidates, and the steps of the search.

    ``candidates`` (trial id -> `Candidate`) and ``best`` are the only state; everything written
    (best.tflite, best.keras, recipe.yaml, report.*) is derived from them by `save`.
    """

    def __init__(
        self,
        model,
        train,
        val,
        *,
        test,
        max_accuracy_drop: float,
        target: str,
        objective: str,
        out_dir: Path,
        techniques,
        seeds,
        space,
        seed: int,
        max_trials: int | None,
        run_config: dict | None,
        say: Callable[[str], None],
        started: float,
        budgets: dict | None = None,
        worker: bool = False,
    ):
        self.model, self.train, self.val, self.test = model, train, val, test
        self.max_accuracy_drop = max_accuracy_drop
        self.target, self.objective = target, objective
        self.key = OBJECTIVE_KEYS[objective]
        self.budgets = {
            "max_ram": None,
            "max_flash": None,
            "min_robust_accuracy": None,
            "robust_epsilon": None,
            **(budgets or {}),
        }
        from tfopt import _tflm

        # TFLite Micro measures every candidate when the target is TFLM, a RAM/flash budget or
        # the RAM objective needs it, or (int8 targets) it is installed
        self.micro = _tflm.available()
        self.out_dir, self.seed, self.run_config = out_dir, seed, run_config
        self.say, self.started = say, started
        self.candidates: dict[str, Candidate] = {}
        self.best: Candidate | None = None
        self.refine_info: dict = {"runs": 0, "stopped": "not_started", "limit": None}
        self.report: dict[str, Path] = {}
        self.data: dict = {}
        self.recipe_path: Path | None = None

        # a worker of a distributed screening records its trials; its chief measured the baseline
        # (before it listened) and the parent writes the report once the screening is over
        self.worker = worker
        self.replayable = True
        if worker:
            self.baseline = json.loads((out_dir / "baseline.json").read_text())
        else:
            try:  # the model of recipe.yaml; kept on resume (the same weights: the identity
                # check), so the sha256 an earlier recipe.yaml records stays true
                if not (out_dir / "baseline.keras").is_file():
                    _rundir.save_model(model, out_dir / "baseline.keras")
            except Exception as e:  # a model Keras cannot save: no recipe.yaml, the search goes on
                self.replayable = False
                self.say(
                    f"[auto] no recipe.yaml: the model cannot be saved ({type(e).__name__}: {e})"
                )
            self.baseline = _measure_baseline(
                model, out_dir, val, test, train[0][:200], micro=self.micro or None
            )
            write_json(out_dir / "baseline.json", self.baseline)
        b = self.baseline
        self.say(
            f"[auto] baseline (float32 TFLite): {b['bytes']} bytes, {b['gzip_bytes']} gzip bytes, "
            f"val acc {b['val_accuracy']:.4f}"
            + (f", test acc {b['test_accuracy']:.4f}" if test is not None else "")
            + f"; budget: -{100 * max_accuracy_drop:.2f} pt on val"
            + _budget_text(self.budgets)
            + (" (test is measured, not used to select)" if test is not None else "")
        )
        self.hypermodel = CompressionHyperModel(
            model=model, techniques=techniques, target=target, space=space
        )
        self.seeds = default_seeds(self.hypermodel, self.budgets) if seeds is None else list(seeds)
        self.oracle = AutoOracle(
            objective=_objective(),
            max_trials=max_trials or 999,
            num_initial_points=max(2, len(self.seeds)),  # then the Gaussian process proposes
            seeds=self.seeds,
            seed=seed,
            max_failures=8,
        )
        self.tuner = Tuner(
            self.oracle,
            self.hypermodel,
            epochs=0,
            objective=objective,
            baseline_accuracy=b["val_accuracy"],
            max_accuracy_drop=max_accuracy_drop,
            max_ram=self.budgets["max_ram"],
            max_flash=self.budgets["max_flash"],
            min_robust_accuracy=self.budgets["min_robust_accuracy"],
            robust_epsilon=self.budgets["robust_epsilon"],
            on_trial_done=self._on_trial_done,
            save_models=True,
            trial_seed=seed,
            directory=str(out_dir),
            project_name="search",
            overwrite=False,
        )
        from tfopt.tune._distributed import pace_idle

        pace_idle(self.tuner)  # a worker of a distributed screening: no busy loop while IDLE
        self.refine_dir = out_dir / "refine"
        for record in self.tuner.records():  # trials of an earlier, resumed run
            self._add(record)
        for path in sorted(self.refine_dir.glob("r*/tfopt.json")):
            stale = _refine_record(path)
            if isinstance(stale, str):  # re-made: a refinement run is a plain re-run
                self.say(f"[auto] {path.parent.name} is re-made: {stale}")
                path.unlink()
            else:
                self._add(stale)
        if self.candidates:
            self.say(f"[auto] resuming: {len(self.candidates)} trial(s) already done in {out_dir}")

    # -- candidates ------------------------------------------------------------------------------
    def _add(self, record: dict) -> Candidate:
        c = Candidate.from_record(record, self.baseline, self.max_accuracy_drop, self.budgets)
        stale = _stale(c, record)
        if stale:  # never select (or copy to best.tflite) a file that is not the one measured
            c.status, c.within_budget = "ERROR", None
            c.error = f"not used on resume: {stale}"
        elif c.keras_model and _rundir.verify(c.keras_model, record.get("keras_digest")):
            c.keras_model = None
        if c.recipe and not c.steps:  # a record written before trials kept their steps
            c.steps = dump_steps(recipe_steps(c.recipe, target=self.target))
        self.candidates[c.trial_id] = c
        if c.phase == "search":
            self.oracle.add_duration(c.seconds)
        return c

    def _on_trial_done(self, trial_id: str, record: dict) -> None:
        self._add_and_report(record, "running")

    def _add_and_report(self, record: dict, stopped: str) -> None:
        c = self._add(record)
        if not self.worker:
            self.save(stopped)
        self.say(progress_line(c, self.best, self.baseline, time.monotonic() - self.started))

    # -- the phases ------------------------------------------------------------------------------
    def set_deadline(self, time_budget, refine) -> None:
        """The screening's share of ``time_budget`` (all of it when nothing is refined)."""
        if time_budget is not None:
            share = 0.0 if refine == 0 else REFINE_SHARE
            self.oracle.deadline = self.started + (1.0 - share) * float(time_budget)

    def run(self, *, time_budget, max_trials, refine, screen: bool = True) -> str:
        """Screens, then refines, until the budgets are spent; returns why the search ended.

        ``screen=False`` skips the first screening (done by the workers of a distributed search).
        """
        import keras_tuner.src.config as kt_config

        self.refine_info["limit"] = refine
        deadline = None if time_budget is None else self.started + float(time_budget)
        self.set_deadline(time_budget, refine)
        debug, kt_config.DEBUG = kt_config.DEBUG, False  # failures go to the report
        try:
            while True:
                if screen:
                    stopped = self.screen(max_trials)
                else:  # screened by the workers: why their chief stopped is in the trials
                    screen, stopped = True, "screened_by_workers"
                self.save(stopped)
                if stopped == "interrupted" or refine == 0:
                    break
                outcome = self.refine(limit=refine, deadline=deadline, stopped=stopped)
                if outcome in ("interrupted", "time_budget"):
                    stopped = outcome
                    break
                # Nothing left to refine while the time budget still has room: screen more
                # recipes (the search's share of what is left), then refine again.
                if stopped != "time_budget" or outcome != "done":
                    break
                left = deadline - time.monotonic()
                durations = self.oracle.durations
                typical = statistics.median(durations) if durations else 0.0
                if left < 2 * (1 + REFINE_EPOCHS) * typical:
                    break
                self.say(
                    f"[auto] nothing left to refine with {fmt_time(left)} to go: screening more"
                )
                self.oracle.deadline = time.monotonic() + (1.0 - REFINE_SHARE) * left
        finally:
            kt_config.DEBUG = debug
        self.save(stopped)
        return stopped

    def screen(self, max_trials) -> str:
        """Runs screening trials until the oracle stops; returns why."""
        self.oracle.stop_reason = None
        try:
            self.tuner.search(self.train, self.val, test=self.test, teacher=self.model, verbose=0)
        except KeyboardInterrupt:
            self.say("[auto] interrupted: writing the report with the trials done so far")
            return "interrupted"
        if self.oracle.stop_reason is not None:
            if self.oracle.stop_reason == "too_many_failures":
                self.say(f"[auto] stopping: the last {self.oracle.max_failures} trials failed")
            return self.oracle.stop_reason
        if max_trials is None or len(self.oracle.trials) < max_trials:
            return "search_space_exhausted"
        return "max_trials"

    def refine(self, *, limit: int | None, deadline: float | None, stopped: str) -> str:
        """Re-runs the most promising candidates (`refine_queue`) with `refine_recipe`.

        Runs until the queue is empty (``"done"``), ``limit`` refinement runs exist
        (``"limit"``), or the next run would likely overrun ``deadline`` (``"time_budget"``);
        Ctrl-C gives ``"interrupted"``.
        """
        durations: list[float] = []
        outcome = "done"
        try:
            while True:
                cands = [c.to_dict() for c in self.candidates.values()]
                runs = [c for c in cands if c["refined_from"]]
                self.refine_info["runs"] = len(runs)
                if limit is not None and len(runs) >= limit:
                    outcome = "limit"
                    break
                best = self.best.to_dict() if self.best and self.best.phase == "refine" else None
                queue = refine_queue(
                    cands,
                    self.baseline["val_accuracy"],
                    self.max_accuracy_drop,
                    key=self.key,
                    best=best,
                )
                if not queue:
                    break
                source = queue[0]
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
                    distill = "distill" in self.hypermodel.techniques
                    self.say(
                        f"[auto] refinement: {len(queue)} candidate(s) within "
                        f"{100 * REFINE_MARGIN:.0f} pt of the budget; re-running the most "
                        f"promising with {REFINE_EPOCHS}x the fine-tuning"
                        + (" and distillation" if distill else "")
                    )
                rid = next(
                    f"r{n:03d}" for n in range(len(runs) + 1) if f"r{n:03d}" not in self.candidates
                )
                record = refinement_run(
                    self.model,
                    source,
                    run_id=rid,
                    run_dir=self.refine_dir / rid,
                    techniques=self.hypermodel.techniques,
                    target=self.target,
                    train=self.train,
                    val=self.val,
                    test=self.test,
                    seed=self.seed,
                    robust_epsilon=self.budgets["robust_epsilon"],
                )
                durations.append(record["seconds"])
                self.refine_info["runs"] = len(runs) + 1
                self._add_and_report({**record, "dir": str(self.refine_dir / rid)}, stopped)
        except KeyboardInterrupt:
            outcome = "interrupted"
            self.say("[auto] interrupted: writing the report with the trials done so far")
        self.refine_info["stopped"] = outcome
        return outcome

    # -- outputs ---------------------------------------------------------------------------------
    def save(self, stopped: str) -> None:
        """Selects the best candidate and rewrites best.tflite/.keras, recipe.yaml and the report."""
        cands = sorted(self.candidates.values(), key=lambda c: c.trial_id)
        done = [c for c in cands if c.completed]
        points = [
            {
                "accuracy": c.val_accuracy,
                "gzip_bytes": c.gzip_bytes,
                "latency_ms": c.latency_ms,
                "arena_bytes": c.arena_bytes,
                "flash_bytes": c.flash_bytes,
            }
            for c in done
        ]
        objectives = front_objectives(points)
        front = [done[i].trial_id for i in pareto_front(points, objectives)] if done else []
        best = select_best(done, self.key)
        if best is not None and (self.best is None or self.best.trial_id != best.trial_id):
            _rundir.copy_file(best.artifact, self.out_dir / "best.tflite")
            if best.keras_model:
                _rundir.copy_file(best.keras_model, self.out_dir / "best.keras")
            else:
                (self.out_dir / "best.keras").unlink(missing_ok=True)
            if self.replayable:
                raw = recipe_config(
                    best.to_dict(),
                    out_dir=self.out_dir,
                    target=self.target,
                    seed=self.seed,
                    run_config=self.run_config,
                )
                self.recipe_path = write_recipe(
                    self.out_dir / "recipe.yaml",
                    raw,
                    best=best.to_dict(),
                    run_config=self.run_config,
                )
        if best is None:
            for stale in ("best.tflite", "best.keras", "recipe.yaml"):
                (self.out_dir / stale).unlink(missing_ok=True)
            self.recipe_path = None
        self.best = best
        closest = max(done, key=lambda c: c.val_accuracy) if done else None
        test_note = "; test accuracy is measured and reported only" if self.test is not None else ""
        self.data = {
            "name": self.out_dir.name,
            "target": self.target,
            "objective": self.objective,
            "max_accuracy_drop": self.max_accuracy_drop,
            "baseline": self.baseline,
            "best": None
            if best is None
            else {**best.to_dict(), "artifact": str(self.out_dir / "best.tflite")},
            "recipe": None if self.recipe_path is None else str(self.recipe_path),
            "closest": None if closest is None else closest.to_dict(),
            "front": front,
            "front_objectives": objectives,
            "budgets": self.budgets,
            "candidates": [c.to_dict() for c in cands],
            "trials_completed": len(done),
            "trials_failed": len(cands) - len(done),
            "stopped": stopped,
            "elapsed_s": time.monotonic() - self.started,
            "techniques": list(self.hypermodel.techniques),
            "missing_techniques": list(self.hypermodel.missing_techniques),
            "seeds": self.seeds,
            "refinement": {
                **self.refine_info,
                "epochs_factor": REFINE_EPOCHS,
                "margin": REFINE_MARGIN,
                "distill": "distill" in self.hypermodel.techniques,
            },
            "selection": SELECTION.format(key=self.key, budgets=_budget_text(self.budgets))
            + test_note,
        }
        self.report = write_report(self.out_dir, self.data)

    def finish(self, stopped: str) -> None:
        """Says what was found (the best candidate and how to replay it)."""
        best, base = self.best, self.baseline
        if best is None:
            self.say(
                f"[auto] no candidate within the budget ({stopped}); "
                f"report: {self.report['markdown']}"
            )
        else:
            test_part = ""
            if best.test_accuracy is not None:
                test_part = (
                    f", test {100 * (best.test_accuracy - base['test_accuracy']):+.2f} pt "
                    "(not used to select)"
                )
            self.say(
                f"[auto] best: trial {best.trial_id} ({' + '.join(best.stages)}) "
                f"{best.gzip_bytes} gzip bytes = {best.ratio:.1f}x smaller than the float32 "
                f"TFLite's {base['gzip_bytes']} gzip bytes; val "
                f"{100 * (best.val_accuracy - base['val_accuracy']):+.2f} pt{test_part}; "
                f"{_micro_text(best)}"
                f"replay: tfopt run {self.recipe_path}; report: {self.report['markdown']}"
            )


def _stale(c: Candidate, record: dict) -> str | None:
    """Why a completed candidate's artifact is not the file its record measured, or None."""
    if not c.completed:
        return None
    return _rundir.verify(c.artifact, (record.get("metrics") or {}).get("digest"))


def _refine_record(path: Path) -> dict | str:
    """The refinement record at ``path`` (with its ``dir``), or why it must be re-made."""
    try:
        record = {**json.loads(path.read_text()), "dir": str(path.parent)}
    except (ValueError, OSError) as e:
        return f"its record cannot be read ({type(e).__name__})"
    if record.get("status") == "COMPLETED":
        metrics = record.get("metrics") or {}
        path = _rundir.record_path(metrics.get("path"), record["dir"])
        stale = _rundir.verify(path, metrics.get("digest")) if path else "no artifact recorded"
        if stale:
            return stale
    return record


# the measurement each `optimize` objective minimizes
OBJECTIVE_KEYS = {"size": "gzip_bytes", "latency": "latency_ms", "ram": "arena_bytes"}


def _micro_text(c: Candidate) -> str:
    """What TFLite Micro measured of a candidate, for the console (ends with "; ")."""
    from tfopt.auto._report import tflm_cell

    if c.arena_bytes is None:
        return f"TFLite Micro {tflm_cell(c.to_dict())}; "
    return (
        f"TFLite Micro arena {c.arena_bytes:,} B, flash {c.flash_bytes:,} B, argmax agreement "
        f"with LiteRT {tflm_cell(c.to_dict())}; "
    )


def _budget_text(budgets: dict) -> str:
    parts = [
        f"{label} <= {budgets[key]:,} B"
        for key, label in (("max_ram", "TFLM arena"), ("max_flash", "flash"))
        if budgets.get(key) is not None
    ]
    if budgets.get("min_robust_accuracy") is not None:
        parts.append(
            f"PGD accuracy >= {budgets['min_robust_accuracy']:g} at "
            f"eps={budgets['robust_epsilon']:g}"
        )
    return (", " + ", ".join(parts)) if parts else ""


def _objective():
    import keras_tuner

    return keras_tuner.Objective("score", "max")
