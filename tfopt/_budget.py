"""What a compressed candidate must meet: one `Budget` value, checked once when it is made."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def check_accuracy_drop(max_accuracy_drop) -> float:
    """Raises ValueError unless ``max_accuracy_drop`` is a fraction in [0, 1)."""
    ok = isinstance(max_accuracy_drop, int | float) and not isinstance(max_accuracy_drop, bool)
    if not (ok and 0.0 <= max_accuracy_drop < 1.0):
        raise ValueError(
            f"max_accuracy_drop must be a fraction in [0, 1) (0.005 = half a point). "
            f"Received: max_accuracy_drop={max_accuracy_drop!r}"
        )
    return float(max_accuracy_drop)


def _number(v) -> bool:
    return isinstance(v, int | float | np.floating) and not isinstance(v, bool)


def _check_robustness(min_robust_accuracy, robust_epsilon) -> None:
    if min_robust_accuracy is not None and not (
        _number(min_robust_accuracy) and 0.0 <= min_robust_accuracy <= 1.0
    ):
        raise ValueError(
            "min_robust_accuracy must be a fraction in [0, 1]. Received: "
            f"min_robust_accuracy={min_robust_accuracy!r}"
        )
    if robust_epsilon is not None and not (_number(robust_epsilon) and robust_epsilon > 0):
        raise ValueError(
            f"robust_epsilon must be a number > 0. Received: robust_epsilon={robust_epsilon!r}"
        )
    if min_robust_accuracy is not None and robust_epsilon is None:
        raise ValueError(
            "min_robust_accuracy needs robust_epsilon (the PGD attack's L-inf radius). Received: "
            f"min_robust_accuracy={min_robust_accuracy!r}, robust_epsilon=None"
        )


# the budgets besides accuracy, in the order reports and run identities name them
LIMITS = ("max_ram", "max_flash", "max_latency_ms", "min_robust_accuracy", "robust_epsilon")


@dataclass(frozen=True)
class Budget:
    """The budgets a candidate must meet, as one value; checked when it is made.

    Args:
        max_accuracy_drop: the allowed accuracy drop on val, a fraction (0.005 = half a point).
        max_ram: the most RAM: TFLite Micro's arena, as bytes or a size such as ``"64KB"``
            (KB = 1024 bytes); stored as bytes. Defaults to None.
        max_flash: the most flash: the raw flatbuffer's bytes (``"256KB"``). Defaults to None.
        max_latency_ms: the longest p50 latency of one single-sample request through the
            artifact, in milliseconds, as the search measures it (in LiteRT on this machine;
            in TFLite Micro for the ``tflm`` target). Defaults to None.
        min_robust_accuracy: the least val accuracy under a PGD-10 attack at ``robust_epsilon``.
            Defaults to None.
        robust_epsilon: the attack's L-inf radius (input units); needed by
            ``min_robust_accuracy``, and alone it only measures. Defaults to None.

    Raises:
        ValueError: a value out of range or a size that does not parse (named in the message).

    Example:
        >>> tfopt.auto.Budget(max_accuracy_drop=0.01, max_ram="64KB").max_ram
        65536
    """

    max_accuracy_drop: float
    max_ram: int | None = None
    max_flash: int | None = None
    max_latency_ms: float | None = None
    min_robust_accuracy: float | None = None
    robust_epsilon: float | None = None

    def __post_init__(self):
        checked = {
            "max_accuracy_drop": check_accuracy_drop(self.max_accuracy_drop),
            "max_ram": _size(self.max_ram, "max_ram"),
            "max_flash": _size(self.max_flash, "max_flash"),
            "max_latency_ms": _latency(self.max_latency_ms),
        }
        _check_robustness(self.min_robust_accuracy, self.robust_epsilon)
        checked["min_robust_accuracy"] = _float(self.min_robust_accuracy)
        checked["robust_epsilon"] = _float(self.robust_epsilon)
        for name, value in checked.items():  # frozen: the checked values replace the given ones
            object.__setattr__(self, name, value)

    @property
    def memory(self) -> bool:
        """True when a RAM or flash budget is set (a microcontroller's: the flatbuffer is raw)."""
        return self.max_ram is not None or self.max_flash is not None

    def limits(self) -> dict:
        """The budgets besides accuracy (`LIMITS`), each None when not set."""
        return {name: getattr(self, name) for name in LIMITS}

    def check_target(self, target: str, objective: str) -> None:
        """Refuses a RAM budget, the RAM objective or the ``tflm`` target on a target TFLite
        Micro does not run (it runs the int8 ones), and imports TFLite Micro when it is needed.

        Raises:
            ValueError: such a budget on a float target.
            MissingDependencyError: TFLite Micro is needed and tflite-micro is not installed.
        """
        from tfopt import _formats, _tflm

        needs_micro = self.max_ram is not None or objective == "ram" or target == "tflm"
        if needs_micro and _formats.get(target).quantization != "int8":
            raise ValueError(
                f"max_ram and objective='ram' are measured in TFLite Micro, which runs int8 "
                f"models: use target='tflite-int8' or 'tflm'. Received: target={target!r}"
            )
        if needs_micro:
            _tflm.import_runtime()

    def score_options(self) -> dict:
        """The keyword arguments of `tfopt.tune.score` that this budget sets."""
        return {
            "max_accuracy_drop": self.max_accuracy_drop,
            "max_ram": self.max_ram,
            "max_flash": self.max_flash,
            "max_latency_ms": self.max_latency_ms,
            "min_robust_accuracy": self.min_robust_accuracy,
        }

    def text(self) -> str:
        """The budgets besides accuracy for a sentence, e.g. ``", flash <= 2,000 B"`` ("" when
        none is set)."""
        parts = [
            f"{label} <= {getattr(self, key):,} B"
            for key, label in (("max_ram", "TFLM arena"), ("max_flash", "flash"))
            if getattr(self, key) is not None
        ]
        if self.max_latency_ms is not None:
            parts.append(f"latency p50 <= {self.max_latency_ms:g} ms")
        if self.min_robust_accuracy is not None:
            parts.append(
                f"PGD accuracy >= {self.min_robust_accuracy:g} at eps={self.robust_epsilon:g}"
            )
        return (", " + ", ".join(parts)) if parts else ""


def _float(v) -> float | None:
    return None if v is None else float(v)


def _size(v, name: str) -> int | None:
    from tfopt._units import parse_size

    return None if v is None else parse_size(v, name)


def _latency(v) -> float | None:
    if v is not None and not (_number(v) and 0 < v < float("inf")):
        raise ValueError(
            "max_latency_ms must be a finite number of milliseconds > 0. Received: "
            f"max_latency_ms={v!r}"
        )
    return _float(v)
