"""The screening oracle of `tfopt.auto`: known-good seeds, then Bayesian optimization, and the
decision to stop, taken where KerasTuner expects it (``populate_space`` returns ``STOPPED``)."""

from __future__ import annotations

import statistics
import time

from tfopt.tune._tuner import SeededBayesianOptimizationOracle


class AutoOracle(SeededBayesianOptimizationOracle):
    """`SeededBayesianOptimizationOracle` that ends the screening itself.

    ``populate_space`` returns ``{"status": "STOPPED"}`` when the next trial would likely overrun
    ``deadline`` (a ``time.monotonic()`` value; the median duration of the trials so far, told by
    `add_duration`, is the estimate) or when the last ``max_failures`` trials all failed;
    ``stop_reason`` then says which (``"time_budget"`` or ``"too_many_failures"``). KerasTuner's own
    consecutive-failure check (which raises) is off.

    Args:
        max_failures: failed trials in a row that end the screening. Defaults to 8.
        **kwargs: passed to `SeededBayesianOptimizationOracle`.
    """

    def __init__(self, *args, max_failures: int = 8, **kwargs):
        kwargs["max_consecutive_failed_trials"] = None
        super().__init__(*args, **kwargs)
        self.max_failures = int(max_failures)
        self.deadline: float | None = None
        self.durations: list[float] = []
        self.stop_reason: str | None = None

    def add_duration(self, seconds: float) -> None:
        self.durations.append(float(seconds))

    def _failed_in_a_row(self) -> int:
        n = 0
        for trial_id in reversed(self.end_order):
            if self.trials[trial_id].status != "FAILED":
                break
            n += 1
        return n

    def populate_space(self, trial_id):
        if self.deadline is not None:
            typical = statistics.median(self.durations) if self.durations else 0.0
            if time.monotonic() + typical > self.deadline:
                self.stop_reason = "time_budget"
                return {"status": "STOPPED", "values": None}
        if self._failed_in_a_row() >= self.max_failures:
            self.stop_reason = "too_many_failures"
            return {"status": "STOPPED", "values": None}
        return super().populate_space(trial_id)
