"""A candidate of the automatic optimizer (one screened trial or refinement run), and selection."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from tfopt._budget import Budget


@dataclass
class Candidate:
    """One recipe that was run, exported and measured through its artifact.

    ``phase`` is ``"search"`` (a KerasTuner screening trial) or ``"refine"`` (a longer re-run of
    ``refined_from``). ``status`` is ``"COMPLETED"``, ``"FAILED"`` (the artifact could not be
    exported) or ``"ERROR"`` (a bug). ``steps`` are the `tfopt run` step configs that made it (as
    dicts), ``recipe`` the flat search values they came from. ``ratio`` is gzip-to-gzip: the float
    baseline's float32 TFLite gzip bytes over this artifact's gzip bytes.

    ``arena_bytes`` is the tensor arena TFLite Micro's allocation recorder reports (peak RAM),
    ``flash_bytes`` the raw flatbuffer (what a microcontroller stores), ``tflm_agreement`` the
    fraction of val inputs where TFLM's argmax equals LiteRT's; ``tflm_note`` says why TFLM was
    not measured. ``robust_accuracy`` is the val accuracy under PGD at the search's
    ``robust_epsilon`` and ``robust_attack`` how it was measured (examples made on the Keras
    model, run through the artifact). ``rejected`` says which RAM / flash / robustness budget the
    candidate misses (None: it meets them, or there is none); a rejected candidate is never
    selected. ``misses`` names every budget it misses (`BUDGET_NAMES`: ``"accuracy"``, ``"RAM"``,
    ``"flash"``, ``"robustness"``).

    ``val_delta`` / ``test_delta`` compare it with the float baseline on the same samples
    (`tfopt._stats.paired_delta`: accuracy difference, its 95% paired interval, the samples only
    one of the two gets right); None when either side's per-sample results are unknown.
    """

    trial_id: str
    status: str
    phase: str = "search"
    refined_from: str | None = None
    recipe: dict | None = None
    steps: list[dict] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    keras_model: str | None = None
    artifact: str | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    bytes: int | None = None
    gzip_bytes: int | None = None
    latency_ms: float | None = None
    score: float | None = None
    ratio: float | None = None
    within_budget: bool | None = None
    test_drop: float | None = None
    kernel_sparsity: float | None = None
    arena_bytes: int | None = None
    flash_bytes: int | None = None
    tflm_agreement: float | None = None
    tflm_note: str | None = None
    robust_accuracy: float | None = None
    robust_attack: str | None = None
    rejected: str | None = None
    misses: list[str] = field(default_factory=list)
    val_delta: dict | None = None
    test_delta: dict | None = None

    @property
    def completed(self) -> bool:
        return self.status == "COMPLETED"

    @classmethod
    def from_record(
        cls,
        record: dict,
        baseline: dict,
        budget: Budget,
    ) -> Candidate:
        """The candidate of a trial record (``tfopt.json``), measured against ``baseline`` and
        the ``budget``.

        Paths in the record are relative to ``record["dir"]`` (its directory) when it is given.
        """
        from tfopt._rundir import record_path

        where = record.get("dir")
        c = cls(
            trial_id=record["trial_id"],
            status=record["status"],
            phase="refine" if record.get("refined_from") else "search",
            refined_from=record.get("refined_from"),
            recipe=record.get("recipe"),
            steps=record.get("steps") or [],
            stages=record.get("stages") or [],
            seconds=float(record.get("seconds", 0.0)),
            error=record.get("error"),
            keras_model=record_path(record.get("keras_model"), where),
        )
        if c.completed:
            m = record.get("metrics") or {}
            c.val_accuracy = m.get("val_accuracy")
            c.test_accuracy = m.get("test_accuracy")
            c.bytes = m.get("bytes")
            c.gzip_bytes = m.get("gzip_bytes")
            c.latency_ms = m.get("latency_ms")
            c.score = m.get("score")
            c.artifact = record_path(m.get("path"), where)
            c.ratio = baseline["gzip_bytes"] / max(1, c.gzip_bytes)
            # The acceptance rule: the paired point estimate (val accuracy minus the baseline's on
            # the same samples) within the budget; its interval is reported, not required. A
            # lower-bound rule needs a val split whose interval is narrower than the budget: on
            # 400 samples a model that differs from the baseline on one sample each way (delta 0)
            # has the interval [-0.75, +0.75] pt, so under a half-point budget it would reject
            # even that and leave the user with nothing. The point estimate is
            # unbiased for each candidate; the winner's curse of picking the smallest of many
            # is answered by refinement and by reporting the winner's test delta with its
            # interval. Val only: the test data never takes part in selection.
            drop = baseline["val_accuracy"] - c.val_accuracy
            c.within_budget = drop <= budget.max_accuracy_drop + 1e-12
            c.val_delta = _paired(baseline, m, "val")
            c.test_delta = _paired(baseline, m, "test")
            if c.test_accuracy is not None and baseline.get("test_accuracy") is not None:
                c.test_drop = baseline["test_accuracy"] - c.test_accuracy
            c.kernel_sparsity = (record.get("facts") or {}).get("kernel_sparsity")
            c.arena_bytes = m.get("arena_bytes")
            c.flash_bytes = m.get("flash_bytes", c.bytes)
            c.tflm_agreement = m.get("tflm_agreement")
            c.tflm_note = m.get("tflm_note")
            c.robust_accuracy = m.get("robust_accuracy")
            c.robust_attack = m.get("robust_attack")
            c.rejected = over_budget(c, budget)
            c.misses = [name for name, _ in _misses(c, budget)]
            if not c.within_budget:
                c.misses.insert(0, "accuracy")
        return c

    def to_dict(self) -> dict:
        return asdict(self)


def _paired(baseline: dict, metrics: dict, split: str) -> dict | None:
    """The paired delta of a candidate vs the baseline on ``split`` (None without both sides)."""
    from tfopt._stats import paired_delta
    from tfopt.export._measure import unpack_correct

    a, b = baseline.get(f"{split}_correct"), metrics.get(f"{split}_correct")
    n = baseline.get(f"{split}_samples")
    if not (a and b and n):
        return None
    return paired_delta(unpack_correct(a, n), unpack_correct(b, n)).to_dict()


# the budgets a candidate can miss, in the order the reports count them
BUDGET_NAMES = ("accuracy", "RAM", "flash", "latency", "robustness")


def _misses(c: Candidate, budget: Budget) -> list[tuple[str, str]]:
    """``(budget name, why)`` for each RAM / flash / latency / robustness budget ``c`` misses."""
    out = []
    ram, flash = budget.max_ram, budget.max_flash
    if ram is not None:
        if c.arena_bytes is None:
            out.append(("RAM", f"RAM not measured in TFLite Micro ({c.tflm_note or 'no arena'})"))
        elif c.arena_bytes > ram:
            out.append(("RAM", f"arena {c.arena_bytes:,} B > max_ram {ram:,} B"))
    if flash is not None and c.flash_bytes is not None and c.flash_bytes > flash:
        out.append(("flash", f"flash {c.flash_bytes:,} B > max_flash {flash:,} B"))
    latency = budget.max_latency_ms
    if latency is not None and c.latency_ms is not None and c.latency_ms > latency:
        out.append(
            ("latency", f"latency p50 {c.latency_ms:.3f} ms > max_latency_ms {latency:g} ms")
        )
    robust = budget.min_robust_accuracy
    if robust is not None:
        if c.robust_accuracy is None:
            out.append(("robustness", "robust accuracy not measured"))
        elif c.robust_accuracy < robust:
            out.append(
                (
                    "robustness",
                    f"robust accuracy {c.robust_accuracy:.4f} < min_robust_accuracy {robust:g} "
                    f"({c.robust_attack})",
                )
            )
    return out


def over_budget(c: Candidate, budget: Budget) -> str | None:
    """Why ``c`` misses ``budget``'s RAM / flash / latency / robustness budgets, or None when it meets
    them (the accuracy budget is ``within_budget``)."""
    return "; ".join(why for _, why in _misses(c, budget)) or None


def rejections(candidates: Sequence[Candidate]) -> dict[str, int]:
    """How many candidates miss each budget (`BUDGET_NAMES`; one candidate can miss several),
    plus ``"failed"``: those that could not be exported or measured."""
    counts = dict.fromkeys(BUDGET_NAMES, 0)
    counts["failed"] = 0
    for c in candidates:
        if not c.completed:
            counts["failed"] += 1
        for name in c.misses:
            counts[name] += 1
    return counts


def rejection_text(counts: dict[str, int], total: int, budgets: dict) -> str:
    """The rejections per budget, e.g. ``"of 12 candidates: accuracy 7, RAM 3, flash 5 (one
    candidate can miss several); 2 failed to export"``. Budgets that were not set are left out
    (accuracy is always set)."""
    set_ = {
        "accuracy": True,
        "RAM": budgets.get("max_ram") is not None,
        "flash": budgets.get("max_flash") is not None,
        "latency": budgets.get("max_latency_ms") is not None,
        "robustness": budgets.get("min_robust_accuracy") is not None,
    }
    parts = [f"{name} {counts[name]}" for name in BUDGET_NAMES if set_[name] or counts[name]]
    text = f"of {total} candidate(s) rejected: {', '.join(parts)}"
    if sum(set_.values()) > 1:
        text += " (one candidate can miss several)"
    if counts["failed"]:
        text += f"; {counts['failed']} failed to export or measure"
    return text


def closest(candidates: Sequence[Candidate]) -> Candidate | None:
    """The completed candidate nearest to the budgets: the fewest budgets missed, then the
    highest val accuracy, then the smallest gzip size (what auto writes when nothing fits)."""
    done = [c for c in candidates if c.completed]
    if not done:
        return None
    return min(done, key=lambda c: (len(c.misses), -c.val_accuracy, c.gzip_bytes, c.trial_id))


def select_best(candidates: Sequence[Candidate], key: str = "gzip_bytes") -> Candidate | None:
    """The best candidate: within budget on val and within the RAM / flash / robustness budgets (not
    ``rejected``), then the smallest ``key`` (then the most accurate).

    Refined candidates are final (fully fine-tuned, few of them); screened ones count only while no
    refined candidate is within budget: the smallest of ~100 short, noisy screens on val tends to
    owe its place to a lucky val score (the winner's curse). Test accuracy plays no part.
    """
    ok = [c for c in candidates if c.completed and c.within_budget and not c.rejected]
    ok = [c for c in ok if getattr(c, key) is not None]
    ok = [c for c in ok if c.phase == "refine"] or ok
    if not ok:
        return None
    return min(ok, key=lambda c: (getattr(c, key), -c.val_accuracy, c.trial_id))


SELECTION = "val accuracy within budget{budgets}, then smallest {key} (refined candidates first)"


def split_resolution(n: int, baseline_accuracy: float, max_accuracy_drop: float) -> dict:
    """What a val split of ``n`` samples can tell apart, checked against the accuracy budget.

    ``resolution`` is one sample (1/n). ``noise`` is the half-width of the 95% paired interval
    of a candidate that disagrees with the baseline on as many samples as the baseline gets wrong
    (``1.96 * sqrt(d / n)``, ``d`` the baseline's error rate, at least one sample): compressed
    models within a point or two of their baseline tend to differ from it mostly on the samples it
    finds hard, so this is the scale of the val noise a selection faces. ``resolves`` is False
    when the budget is below it (the selection then mostly ranks noise), and ``needed`` is the
    split size whose noise equals the budget (None for a budget of 0).
    """
    d = max(1.0 - float(baseline_accuracy), 1.0 / n)
    noise = 1.959963984540054 * (d / n) ** 0.5
    needed = None if max_accuracy_drop <= 0 else math.ceil(d * (1.96 / max_accuracy_drop) ** 2)
    return {
        "val_samples": int(n),
        "resolution": 1.0 / n,
        "noise": noise,
        "resolves": max_accuracy_drop >= noise,
        "needed": needed,
    }


def resolution_text(r: dict, max_accuracy_drop: float) -> str:
    """One line about `split_resolution` for the log and the report."""
    head = (
        f"val split: {r['val_samples']} samples, resolution {100 * r['resolution']:.2f} pt (one "
        f"sample), paired 95% noise about +-{100 * r['noise']:.2f} pt"
    )
    if r["resolves"]:
        return head + f"; the -{100 * max_accuracy_drop:.2f} pt budget is above it"
    more = (
        f"about {r['needed']:,} val samples would resolve it ({r['needed'] / r['val_samples']:.1f}x"
        " this split: raise data.val_fraction, or pass a larger val set)"
        if r["needed"]
        else "a budget of 0 cannot be resolved by any split"
    )
    return (
        head + f"; the -{100 * max_accuracy_drop:.2f} pt budget is finer than the split can "
        f"resolve, so candidates near it are chosen partly by chance: {more}"
    )
