"""One run of the automatic optimizer: baseline, screening, refinement, selection, outputs.

`Search` owns the candidates (`Candidate`, by trial id) and the best one; the screening is a
KerasTuner search driven by `AutoOracle` (which decides when to stop), the refinement re-runs the
most promising candidates (`tfopt.auto._refine`), `select_best` picks on val, and `save` rewrites
best.tflite, recipe.yaml and the report after every candidate.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

from tfopt import _rundir
from tfopt._budget import Budget
from tfopt.auto._candidate import (
    SELECTION,
    Candidate,
    closest,
    rejections,
    resolution_text,
    select_best,
    split_resolution,
)
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
from tfopt.auto._sensitivity import SPARSITY, layer_sensitivity, plans
from tfopt.tune._recipe import dump_steps, recipe_steps
from tfopt.tune._space import CompressionHyperModel, compression_choices
from tfopt.tune._tuner import Tuner

_logger = logging.getLogger(__name__)

# After `SAFE_FIRST`, the recipes derived from the model (`plan_seeds`), then this short generic
# list: a stack that rests on no per-layer measurement. Magnitude pruning of the large layers to
# 80-90% with int8 QAT is the stack that keeps accuracy on over-parameterized layers in the
# pruning literature (Han et al. 2016, Zhu & Gupta 2017); clustering to 16 values per layer keeps
# the int8 file's values few, which gzip then packs. Both fine-tune with distillation from the
# float model at a low temperature.
_DISTILL = {"distill": True, "temperature": 2.0, "alpha": 0.1, "ft_learning_rate": 2e-3}
_INT4 = {"quantization": "qat", "weight_bits": "4", **_DISTILL, "ft_epochs": 16}
KNOWN_GOOD: tuple[dict, ...] = (
    {"sparsity": 0.8, "prune_scope": "large", "quantization": "qat", **_DISTILL, "ft_epochs": 16},
    {"sparsity": 0.8, "clusters": 16, **_DISTILL, "ft_epochs": 16},
)  # fmt: skip

# The one-shot losses a per-layer plan tolerates (`layer_plan`), moderate first. They are far above
# any accuracy budget because the pass does not fine-tune: measured on the default config's model
# (`tfopt auto --max-accuracy-drop 0.02 --max-trials 2`, sensitivity.json), a 25% channel cut of
# one layer costs 6-19 pt and 80% sparsity 8-55 pt one-shot, while cuts of 50% in every layer with
# 80% sparsity end within half a point once fine-tuned with distillation. At 0.03 only the 4-bit
# weights passed; 0.10 admits the least sensitive cuts, 0.30 about what fine-tuning recovered.
PLAN_TOLERANCES = (0.10, 0.30)


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


# Measured first, whatever the model: the unchanged model quantized to the target (int8 PTQ for
# the int8 targets), then int8 QAT of it, tried only when PTQ misses the budgets (see
# `Search._skip_safe_qat`). Either is rarely smaller than what follows, but it is the candidate
# most likely to fit, so a search of one or two trials still returns a deployable model.
_UNCHANGED = {"channel_ratio": 0.0, "sparsity": 0.0, "clusters": 0, "lowrank_energy": 0.0}
SAFE_FIRST: tuple[dict, ...] = (
    {**_UNCHANGED, "quantization": "ptq", "distill": False},
    {**_UNCHANGED, "quantization": "qat", "weight_bits": "8", **_DISTILL, "ft_epochs": 8},
)


def plan_seeds(labels, *, small: bool = False) -> list[dict]:
    """One recipe per per-layer plan (``labels``, e.g. ``["plan@0.03"]``): its channel ratios,
    its pruned layers (none under a RAM / flash budget: zeros save no flash) and its 4-bit
    layers, fine-tuned with distillation. ``channel_ratio`` only switches the stage on: the plan
    holds the ratios."""
    return [
        {"channel_ratio": 0.5, "channel_scope": label, "sparsity": 0.0 if small else SPARSITY,
         "prune_scope": label, "clusters": 0, "quantization": "qat", "weight_bits": label,
         **_DISTILL, "ft_epochs": 16}
        for label in labels
    ]  # fmt: skip


def default_seeds(hypermodel: CompressionHyperModel, budget: Budget | None = None) -> list[dict]:
    """`SAFE_FIRST`, then the recipes of the model's per-layer plans (`plan_seeds`, when
    ``hypermodel`` is a `PlannedHyperModel`), then the generic ones, restricted to
    ``hypermodel``'s space, deduplicated, in order (`KNOWN_GOOD_SMALL` instead of `KNOWN_GOOD`
    when ``budget`` holds a RAM or flash budget: the others are too large for a
    microcontroller's flash)."""
    names = set(hypermodel.hyperparameter_names())
    seeds, seen = [], set()
    small = budget is not None and budget.memory
    planned_labels = list(getattr(hypermodel, "plans", {}))
    planned = plan_seeds(planned_labels, small=small)
    scopes = [*compression_choices("channel_scope", hypermodel.model), *planned_labels]
    for recipe in (*SAFE_FIRST, *planned, *(KNOWN_GOOD_SMALL if small else KNOWN_GOOD)):
        s = {k: v for k, v in recipe.items() if k in names}
        if s.get("channel_scope", "all") not in scopes:  # no hidden Dense layer to cut
            s["channel_scope"] = "all"
        key = tuple(sorted(s.items()))
        if recipe is SAFE_FIRST[1] and s.get("quantization") != "qat":
            continue  # without QAT in the space it is the unchanged model again
        if s and key not in seen:
            seen.add(key)
            seeds.append(s)
    return seeds


class PlannedHyperModel(CompressionHyperModel):
    """`CompressionHyperModel` whose ``channel_scope``, ``prune_scope`` and ``weight_bits`` also
    offer the model's per-layer plans (``plans``: label -> `layer_plan`); a recipe that picks a
    plan carries its layers (``channel_plan``, ``prune_layers``, ``bits4_layers``,
    `tfopt.tune.recipe_steps`)."""

    _KEYS = (("channel_scope", "channel_plan", "channels"), ("prune_scope", "prune_layers",
             "prune"), ("weight_bits", "bits4_layers", "bits4"))  # fmt: skip

    def __init__(self, model, *, plans: dict[str, dict], space: dict | None = None, **kwargs):

        self.plans = dict(plans)
        plain = CompressionHyperModel(model, space=space, **kwargs)  # checks the user's space
        names = plain.hyperparameter_names()
        space = dict(space or {})
        for key, _, _ in self._KEYS:  # the user's choices stand
            if key in names and self.plans:
                choices = compression_choices(key, model)
                space.setdefault(key, choices + list(self.plans))
        super().__init__(model, space=space, **kwargs)

    def recipe(self, hp) -> dict:
        recipe = super().recipe(hp)
        for key, field, part in self._KEYS:
            label = str(recipe.get(key))
            if label in self.plans:
                recipe[field] = self.plans[label][part]
        return recipe


def _measure_baseline(model, out_dir: Path, val, test, representative, micro=None) -> dict:
    from tfopt.export._measure import export_and_measure

    path = out_dir / "baseline.tflite"
    # the float32 TFLite model, made and measured as every candidate is; which samples it gets
    # right: every candidate is compared with it on the same samples
    m = export_and_measure(
        model, path, format="tflite", representative=representative, val=val, test=test,
        overwrite=True, warmup=5, runs=50, micro=micro, concurrency=(),
    )  # fmt: skip
    res, metrics = m.result, m.metrics
    return {
        "artifact": str(path),
        "format": m.artifact.format,
        "bytes": metrics["bytes"],
        "gzip_bytes": metrics["gzip_bytes"],
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "val_samples": len(val[1]),
        "test_samples": None if test is None else len(test[1]),
        "val_correct": metrics["val_correct"],
        "test_correct": metrics["test_correct"],
        "latency_ms": metrics["latency_ms"],
        "params": int(model.count_params()),
        # the float32 model in TFLite Micro (a reference for the RAM / flash budgets)
        "arena_bytes": res.arena_bytes,
        "flash_bytes": int(res.bytes),
        "tflm_agreement": res.micro.get("tflm_agreement"),
        "tflm_note": res.micro.get("skipped"),
    }


class Search:
    """One `optimize` call: its settings, its candidates, and the steps of the search.

    The constructor only keeps the settings; `start` does the work a search begins with (the
    baseline saved and measured, the sensitivity pass, the tuner, the trials of an earlier run).
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
        budget: Budget,
        target: str,
        objective: str,
        out_dir: Path,
        techniques,
        seeds,
        space,
        seed: int,
        max_trials: int | None,
        run_config: dict | None,
        verbose: int,
        started: float,
        worker: bool = False,
    ):
        from tfopt import _tflm

        self.model, self.train, self.val, self.test = model, train, val, test
        self.budget = budget
        self.requested_target = target  # None: `DEFAULT_TARGET`, or `FALLBACK_TARGET` (`start`)
        self.target, self.objective = target or DEFAULT_TARGET, objective
        self.key = OBJECTIVE_KEYS[objective]
        self.techniques, self.given_seeds, self.space = techniques, seeds, space
        self.max_trials = max_trials
        # TFLite Micro measures every candidate when the target is TFLM, a RAM/flash budget or
        # the RAM objective needs it, or (int8 targets) it is installed
        self.micro = _tflm.available()
        self.out_dir, self.seed, self.run_config = out_dir, seed, run_config
        self.refine_dir = out_dir / "refine"
        # the progress lines: INFO when verbose (the CLI shows them), else DEBUG
        self.say, self.started = _logger.info if verbose else _logger.debug, started
        # a worker of a distributed screening records its trials; its chief measured the baseline
        # (before it listened) and the parent writes the report once the screening is over
        self.worker = worker
        self.replayable = True  # False when the model cannot be saved: no recipe.yaml
        self.candidates: dict[str, Candidate] = {}
        self.best: Candidate | None = None
        self.closest_id: str | None = None  # the candidate in CLOSEST_FILE
        self.refine_info: dict = {"runs": 0, "stopped": "not_started", "limit": None}
        self.report: dict[str, Path] = {}
        self.data: dict = {}
        self.recipe_path: Path | None = None
        self.screen_train = screening_subset(train, seed)

    def start(self) -> Search:
        """Measures the baseline, plans the recipes, builds the tuner and reads back the trials
        of an earlier run in ``out_dir``; returns the search, ready to `run`."""
        self.baseline = self._baseline()
        self.target = self.baseline["target"]
        if self.baseline.get("target_note"):
            _logger.warning("[auto] %s", self.baseline["target_note"])
        self._say_baseline()
        drop = self.budget.max_accuracy_drop
        self.resolution = split_resolution(len(self.val[1]), self.baseline["val_accuracy"], drop)
        self.say("[auto] " + resolution_text(self.resolution, drop))
        self.sensitivity = self._sensitivity(planned=self.given_seeds is None)
        if len(self.screen_train[1]) < len(self.train[1]):
            self.say(
                f"[auto] screening fine-tunes on {len(self.screen_train[1]):,} of the "
                f"{len(self.train[1]):,} training samples; refinement on all of them"
            )
        self.hypermodel = PlannedHyperModel(
            self.model,
            plans=plans(self.sensitivity, PLAN_TOLERANCES) if self.sensitivity else {},
            techniques=self.techniques,
            target=self.target,
            space=self.space,
        )
        seeds = self.given_seeds
        self.seeds = default_seeds(self.hypermodel, self.budget) if seeds is None else list(seeds)
        # the default seeds start with `SAFE_FIRST`: QAT of the unchanged model only when PTQ misses
        self.safe_first = (
            seeds is None and len(self.seeds) > 1 and self.seeds[1] == _safe_qat(self.hypermodel)
        )
        self.oracle = AutoOracle(
            objective=_objective(),
            max_trials=self.max_trials or 999,
            num_initial_points=max(2, len(self.seeds)),  # then the Gaussian process proposes
            seeds=self.seeds,
            seed=self.seed,
            max_failures=8,
        )
        self.tuner = self._tuner()
        self._resume()
        return self

    def _baseline(self) -> dict:
        """The float32 TFLite baseline's measurements (``baseline.json``): measured here, or,
        in a worker, read from its chief's."""
        if self.worker:
            return json.loads((self.out_dir / "baseline.json").read_text())
        try:  # the model of recipe.yaml; kept on resume (the same weights: the identity
            # check), so the sha256 an earlier recipe.yaml records stays true
            if not (self.out_dir / "baseline.keras").is_file():
                _rundir.save_model(self.model, self.out_dir / "baseline.keras")
        except Exception as e:  # a model Keras cannot save: no recipe.yaml, the search goes on
            self.replayable = False
            self.say(f"[auto] no recipe.yaml: the model cannot be saved ({type(e).__name__}: {e})")
        baseline = _measure_baseline(
            self.model,
            self.out_dir,
            self.val,
            self.test,
            self.train[0][:200],
            micro=self.micro or None,
        )
        baseline["target"], baseline["target_note"] = self._choose_target()
        write_json(self.out_dir / "baseline.json", baseline)
        return baseline

    def _choose_target(self) -> tuple[str, str | None]:
        """The target (and why, when it is not the requested or default one): with no target
        requested, one int8 conversion of the model (in the crash-safe worker) decides between
        `DEFAULT_TARGET` and `FALLBACK_TARGET`, so that every candidate is not lost to it."""
        from tfopt import export
        from tfopt.errors import ExportCheckError, MissingDependencyError

        if self.requested_target is not None:
            return self.requested_target, None
        try:
            self.budget.check_target(FALLBACK_TARGET, self.objective)
        except (ValueError, MissingDependencyError):  # a RAM budget needs int8: nothing to try
            return DEFAULT_TARGET, None
        probe = self.out_dir / "int8_probe.tflite"
        try:
            rep = self.train[0][:200]
            export.tflite(self.model, probe, quantization="int8", representative_data=rep,
                          check_data=rep[:16])  # fmt: skip
        except ExportCheckError:  # it converts; how accurate int8 is, the candidates measure
            return DEFAULT_TARGET, None
        except Exception as e:  # a native crash (NativeCrashError) or a converter error
            first = str(e).splitlines()[0] if str(e) else ""
            return FALLBACK_TARGET, (
                f"target {FALLBACK_TARGET} (int8 weights, float activations): the int8 "
                f"conversion of this model failed ({type(e).__name__}: {first}); pass "
                f"--target / target= to insist on one"
            )
        finally:
            probe.unlink(missing_ok=True)
        return DEFAULT_TARGET, None

    def _say_baseline(self) -> None:
        b, has_test = self.baseline, self.test is not None
        self.say(
            f"[auto] baseline (float32 TFLite): {b['bytes']} bytes, {b['gzip_bytes']} gzip bytes, "
            f"val acc {b['val_accuracy']:.4f}"
            + (f", test acc {b['test_accuracy']:.4f}" if has_test else "")
            + f"; budget: -{100 * self.budget.max_accuracy_drop:.2f} pt on val"
            + self.budget.text()
            + (" (test is measured, not used to select)" if has_test else "")
        )

    def _tuner(self) -> Tuner:
        """The screening's tuner: `AutoOracle` proposes, trials are scored against the budget."""
        from tfopt.tune._distributed import pace_idle

        tuner = Tuner(
            self.oracle,
            self.hypermodel,
            epochs=0,
            objective=self.objective,
            baseline_accuracy=self.baseline["val_accuracy"],
            budget=self.budget,
            on_trial_done=self._on_trial_done,
            save_models=True,
            trial_seed=self.seed,
            directory=str(self.out_dir),
            project_name="search",
            overwrite=False,
        )
        pace_idle(tuner)  # a worker of a distributed screening: no busy loop while IDLE
        return tuner

    def _resume(self) -> None:
        """Reads back the trials and refinement runs of an earlier run in ``out_dir``."""
        for record in self.tuner.records():
            self._add(record)
        for path in sorted(self.refine_dir.glob("r*/tfopt.json")):
            stale = _refine_record(path)
            if isinstance(stale, str):  # re-made: a refinement run is a plain re-run
                self.say(f"[auto] {path.parent.name} is re-made: {stale}")
                path.unlink()
            else:
                self._add(stale)
        if self.candidates:
            self.say(
                f"[auto] resuming: {len(self.candidates)} trial(s) already done in {self.out_dir}"
            )

    def _sensitivity(self, *, planned: bool) -> dict | None:
        """The per-layer sensitivity pass (`layer_sensitivity`), made once per run directory
        (``sensitivity.json``: a resumed search and the workers of a distributed one read it);
        None when the seeds are the caller's (no plan is needed)."""
        path = self.out_dir / "sensitivity.json"
        if path.exists():
            return json.loads(path.read_text())
        if not planned or self.worker:
            return None
        t0 = time.monotonic()
        sens = layer_sensitivity(self.model, self.val)
        write_json(path, sens)
        self.say(
            f"[auto] sensitivity pass: {len(sens['layers'])} layer(s) x (channel cuts, "
            f"sparsity, 4-bit) on {sens['samples']} val samples [{fmt_time(time.monotonic() - t0)}]"
        )
        return sens

    # -- candidates ------------------------------------------------------------------------------
    def _add(self, record: dict) -> Candidate:
        c = Candidate.from_record(record, self.baseline, self.budget)
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
            self._skip_safe_qat(c)
        return c

    def _skip_safe_qat(self, c: Candidate) -> None:
        """Drops the QAT seed of the unchanged model once its PTQ (trial 0) fits every budget:
        it would be the same size. The oracle proposes seeds by position, so a resumed search
        drops it again, unless trial 1 ran it (a distributed search started it early)."""
        fits = c.completed and c.within_budget and not c.rejected
        # KerasTuner pads trial ids to the width of max_trials ("0", "00", "000")
        if not (self.safe_first and c.trial_id.isdigit() and int(c.trial_id) == 0 and fits):
            return
        second = next(
            (t for i, t in self.oracle.trials.items() if i.isdigit() and int(i) == 1), None
        )
        keys = ("quantization", "weight_bits", "sparsity", "channel_ratio", "clusters")
        if second is not None and all(
            second.hyperparameters.values.get(k) == self.seeds[1][k]
            for k in keys
            if k in self.seeds[1]
        ):
            return
        self.oracle.seeds.pop(1)
        self.safe_first = False

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
            self.tuner.search(
                self.screen_train, self.val, test=self.test, teacher=self.model, verbose=0
            )
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
                    self.budget.max_accuracy_drop,
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
                    robust_epsilon=self.budget.robust_epsilon,
                    screened=len(self.screen_train[1]) / len(self.train[1]),
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
        best = select_best(done, self.key)
        if best is not None and (self.best is None or self.best.trial_id != best.trial_id):
            self._write_best(best)
        near = None if best is not None else closest(done)
        if best is None:
            for stale in ("best.tflite", "best.keras", "recipe.yaml"):
                (self.out_dir / stale).unlink(missing_ok=True)
            self.recipe_path = None
        self._write_closest(near)
        self.best = best
        self.data = self._report_data(cands, near, stopped)
        self.report = write_report(self.out_dir, self.data)

    def _write_best(self, best: Candidate) -> None:
        """Copies ``best``'s artifact (and Keras model) to best.tflite (best.keras) and writes
        its recipe.yaml."""
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
                self.out_dir / "recipe.yaml", raw, best=best.to_dict(), run_config=self.run_config
            )

    def _front(self, done: list[Candidate]) -> tuple[list[str], dict]:
        """The Pareto front's trial ids and the objectives it is over."""
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
        return front, objectives

    def _report_data(self, cands: list[Candidate], near: Candidate | None, stopped: str) -> dict:
        """What report.json holds (and report.md shows): the settings, the baseline, every
        candidate, the best or the closest one, the front, how the search went."""
        done = [c for c in cands if c.completed]
        front, objectives = self._front(done)
        best = self.best
        test_note = "; test accuracy is measured and reported only" if self.test is not None else ""
        return {
            "name": self.out_dir.name,
            "target": self.target,
            "target_note": self.baseline.get("target_note"),
            "objective": self.objective,
            "max_accuracy_drop": self.budget.max_accuracy_drop,
            "baseline": self.baseline,
            "best": None
            if best is None
            else {**best.to_dict(), "artifact": str(self.out_dir / "best.tflite")},
            "recipe": None if self.recipe_path is None else str(self.recipe_path),
            "closest": None
            if near is None
            else {**near.to_dict(), "artifact": str(self.out_dir / CLOSEST_FILE)},
            "rejections": rejections(cands),
            "resolution": self.resolution,
            "screening": {
                "train_samples": len(self.screen_train[1]),
                "of": len(self.train[1]),
                "refine_epochs_factor": REFINE_EPOCHS,
            },
            "sensitivity": self.sensitivity,
            "plans": self.hypermodel.plans,
            "front": front,
            "front_objectives": objectives,
            "budgets": self.budget.limits(),
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
            "selection": SELECTION.format(key=self.key, budgets=self.budget.text()) + test_note,
            "resident_mb": _resident_mb(),
        }

    def _write_closest(self, near: Candidate | None) -> None:
        """`CLOSEST_FILE`: the candidate nearest to the budgets while none meets them (named so
        that it is never taken for a result); removed once a candidate fits."""
        path = self.out_dir / CLOSEST_FILE
        if near is None:
            path.unlink(missing_ok=True)
        elif near.trial_id != self.closest_id or not path.exists():
            _rundir.copy_file(near.artifact, path)
        self.closest_id = None if near is None else near.trial_id

    def finish(self, stopped: str) -> None:
        """Says what was found (the best candidate and how to replay it)."""
        best, base = self.best, self.baseline
        if best is None:
            near = self.data.get("closest")
            self.say(
                f"[auto] no candidate within the budgets ({stopped}); "
                + (
                    f"the closest, trial {near['trial_id']} (outside the budget: "
                    f"{', '.join(near['misses'])}), is {self.out_dir / CLOSEST_FILE}; "
                    if near
                    else ""
                )
                + f"report: {self.report['markdown']}"
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


def _resident_mb() -> dict:
    """Peak resident memory so far: of this process, and of the converter's worker processes
    (`tfopt._worker`, recycled as the converter leaks)."""
    import resource

    from tfopt import _worker

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"search": round(own, 1), "converter_worker": round(_worker.worker().peak_mb, 1)}


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


# what auto writes when no candidate meets the budgets (never best.tflite: not a result)
CLOSEST_FILE = "closest_over_budget.tflite"
# target=None: int8, or, when the model's int8 conversion fails (TFLite's calibrator crashes on
# some recurrent models), int8 weights with float activations, which need no calibration
DEFAULT_TARGET, FALLBACK_TARGET = "tflite-int8", "tflite-dynamic"


def _safe_qat(hypermodel) -> dict:
    """`SAFE_FIRST`'s QAT seed restricted to ``hypermodel``'s space (as `default_seeds` has it)."""
    names = set(hypermodel.hyperparameter_names())
    return {k: v for k, v in SAFE_FIRST[1].items() if k in names}


# Screen cheap, confirm expensive: screening trials fine-tune on at most this many training samples
# (a random subset, the same one on resume and in every worker), refinement runs on all of them
# with `REFINE_EPOCHS` times the epochs. Ranking recipes against each other needs far fewer samples
# than training the one that is kept, and a full-data screen of a 54,000-image set costs 40-100 s
# an epoch on 2 cores (issue 22). Sets up to this size are screened whole.
SCREEN_SAMPLES = 8192


def screening_subset(train, seed: int, limit: int | None = None):
    """``train`` itself, or ``limit`` (default `SCREEN_SAMPLES`) of its samples drawn with
    ``seed``, in their order."""
    x, y = train
    limit = SCREEN_SAMPLES if limit is None else limit
    if len(y) <= limit:
        return train
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).choice(len(y), limit, replace=False))
    return x[keep], y[keep]


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


def _objective():
    import keras_tuner

    return keras_tuner.Objective("score", "max")
