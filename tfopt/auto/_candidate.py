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

    @property
    def completed(self) -> bool:
        return self.status == "COMPLETED"

    @classmethod
    def from_record(cls, record: dict, baseline: dict, max_accuracy_drop: float) -> Candidate:
        """The candidate of a trial record (``tfopt.json``), measured against ``baseline``.

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
        return c

    def to_dict(self) -> dict:
        return asdict(self)


def select_best(candidates: Sequence[Candidate], key: str = "gzip_bytes") -> Candidate | None:
    """The best candidate: within budget on val, then the smallest ``key`` (then the most accurate).

    Refined candidates are final (fully fine-tuned, few of them); screened ones count only while no
    refined candidate is within budget: the smallest of ~100 short, noisy screens on val tends to
    owe its place to a lucky val score (the winner's curse). Test accuracy plays no part.
    """
    ok = [c for c in candidates if c.completed and c.within_budget]
    ok = [c for c in ok if c.phase == "refine"] or ok
    if not ok:
        return None
    return min(ok, key=lambda c: (getattr(c, key), -c.val_accuracy, c.trial_id))


SELECTION = "val accuracy within budget, then smallest {key} (refined candidates first)"
