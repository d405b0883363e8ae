"""A candidate of the automatic optimizer (one screened trial or refinement run), and selection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


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
    selected.
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

    @property
    def completed(self) -> bool:
        return self.status == "COMPLETED"

    @classmethod
    def from_record(
        cls,
        record: dict,
        baseline: dict,
        max_accuracy_drop: float,
        budgets: dict | None = None,
    ) -> Candidate:
        """The candidate of a trial record (``tfopt.json``), measured against ``baseline`` and
        the ``budgets`` (``{"max_ram": bytes or None, "max_flash": bytes or None,
        "min_robust_accuracy": fraction or None}``).

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
            # val only: the test data never takes part in selection
            c.within_budget = baseline["val_accuracy"] - c.val_accuracy <= max_accuracy_drop + 1e-12
            if c.test_accuracy is not None and baseline.get("test_accuracy") is not None:
                c.test_drop = baseline["test_accuracy"] - c.test_accuracy
            c.kernel_sparsity = (record.get("facts") or {}).get("kernel_sparsity")
            c.arena_bytes = m.get("arena_bytes")
            c.flash_bytes = m.get("flash_bytes", c.bytes)
            c.tflm_agreement = m.get("tflm_agreement")
            c.tflm_note = m.get("tflm_note")
            c.robust_accuracy = m.get("robust_accuracy")
            c.robust_attack = m.get("robust_attack")
            c.rejected = over_budget(c, budgets or {})
        return c

    def to_dict(self) -> dict:
        return asdict(self)


def over_budget(c: Candidate, budgets: dict) -> str | None:
    """Why ``c`` misses the ``budgets`` (``max_ram`` / ``max_flash`` in bytes, ``min_robust_accuracy``
    a fraction; each None when not set), or None when it meets them."""
    reasons = []
    ram, flash = budgets.get("max_ram"), budgets.get("max_flash")
    if ram is not None:
        if c.arena_bytes is None:
            reasons.append(f"RAM not measured in TFLite Micro ({c.tflm_note or 'no arena'})")
        elif c.arena_bytes > ram:
            reasons.append(f"arena {c.arena_bytes:,} B > max_ram {ram:,} B")
    if flash is not None and c.flash_bytes is not None and c.flash_bytes > flash:
        reasons.append(f"flash {c.flash_bytes:,} B > max_flash {flash:,} B")
    robust = budgets.get("min_robust_accuracy")
    if robust is not None:
        if c.robust_accuracy is None:
            reasons.append("robust accuracy not measured")
        elif c.robust_accuracy < robust:
            reasons.append(
                f"robust accuracy {c.robust_accuracy:.4f} < min_robust_accuracy {robust:g} "
                f"({c.robust_attack})"
            )
    return "; ".join(reasons) or None


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
