"""Pruning schedules: pure callables ``step -> sparsity``, serializable and validated.

A schedule answers two questions for a training step (0 for the first batch): the sparsity the
masks should have (``schedule(step)``) and whether the masks are recomputed at that step
(``schedule.should_update(step)``). Both accept a Python int (returning Python values) or a
TensorFlow integer tensor (returning tensors, for use inside ``tf.function``).

The meaning of ``begin_step``, ``end_step``, ``power`` and ``frequency`` follows
tensorflow-model-optimization, with one deliberate fix: the masks are also updated at ``end_step``
itself, so the final sparsity is reached even when ``end_step - begin_step`` is not a multiple of
``frequency`` (tfmot silently stops short of the target in that case).
"""

from __future__ import annotations

import numbers
import warnings

from tfopt._backend import import_keras

keras = import_keras()

__all__ = [
    "ConstantSparsity",
    "GradualCubic",
    "PolynomialDecay",
    "PruningSchedule",
    "PruningScheduleWarning",
]


class PruningScheduleWarning(UserWarning):
    """A pruning schedule cannot reach its target sparsity in the steps that will run."""


def _is_tensor(x) -> bool:
    return not isinstance(x, numbers.Number)


def _check_sparsity(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1). Received: {name}={value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1). Received: {name}={value!r}")
    return float(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}. Received: {name}={value!r}")
    return int(value)


class PruningSchedule:
    """Base class: a pure function of the training step. Subclasses define the formula."""

    begin_step: int
    end_step: int
    frequency: int

    def __call__(self, step):
        """Returns the target sparsity at ``step`` (a float, or a float32 tensor for a tensor)."""
        raise NotImplementedError

    @property
    def target_sparsity(self) -> float:
        """The sparsity the schedule ends at."""
        raise NotImplementedError

    @property
    def final_step(self) -> int:
        """The first step at which the masks hold ``target_sparsity``."""
        raise NotImplementedError

    def should_update(self, step):
        """Whether the masks are recomputed at ``step`` (a bool, or a bool tensor)."""
        end = self.end_step
        if not _is_tensor(step):
            if step < self.begin_step or (end >= 0 and step > end):
                return False
            return (step - self.begin_step) % self.frequency == 0 or step == end
        import tensorflow as tf

        step = tf.cast(step, tf.int64)
        begin = tf.constant(self.begin_step, tf.int64)
        turn = tf.equal(tf.math.floormod(step - begin, self.frequency), 0)
        if end >= 0:
            turn = tf.logical_or(turn, tf.equal(step, end))
            in_range = tf.logical_and(step >= begin, step <= end)
        else:
            in_range = step >= begin
        return tf.logical_and(in_range, turn)

    def check(self, total_steps: int, *, start_step: int = 0, strict: bool = False) -> bool:
        """Checks that training for ``total_steps`` more steps reaches the target sparsity.

        Args:
            total_steps: the number of training steps that will run (epochs * steps per epoch).
            start_step: the pruning step the model is at now (non-zero when resuming). Defaults to 0.
            strict: raise instead of warning. Defaults to False.

        Returns:
            True when the last step that will run (``start_step + total_steps - 1``) is at or after
            ``final_step``; otherwise False, after a `PruningScheduleWarning`.

        Raises:
            ValueError: when ``strict`` is True and the target cannot be reached.
        """
        last = int(start_step) + int(total_steps) - 1
        if self.target_sparsity == 0.0 or last >= self.final_step:
            return True
        reached = float(self(max(last, 0))) if last >= self.begin_step else 0.0
        msg = (
            f"{self!r} reaches target_sparsity={self.target_sparsity} at step {self.final_step}, "
            f"but training runs {total_steps} steps from step {start_step} (last step {last}), so "
            f"the model would end at {reached:.1%} sparsity. Lower end_step/begin_step "
            f"to at most {max(last, 0)} or train longer."
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, PruningScheduleWarning, stacklevel=2)
        return False

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package="tfopt")
class ConstantSparsity(PruningSchedule):
    """Holds one sparsity from ``begin_step`` on, recomputing the masks every ``frequency`` steps.

    Args:
        target_sparsity: the fraction of weights set to zero, in [0, 1).
        begin_step: the first step at which the masks are applied. Defaults to 0.
        end_step: the last step at which the masks are recomputed; -1 means never stop (the
            masks still apply after it). Defaults to -1.
        frequency: recompute the masks every this many steps. Defaults to 100.

    Raises:
        ValueError: for a sparsity outside [0, 1), a negative begin_step, frequency < 1 or an
            end_step before begin_step.

    Example:
        >>> s = ConstantSparsity(0.5, begin_step=10)
        >>> s(0), s(10)
        (0.0, 0.5)
    """

    def __init__(
        self, target_sparsity: float, begin_step: int = 0, end_step: int = -1, frequency: int = 100
    ):
        self._target = _check_sparsity("target_sparsity", target_sparsity)
        self.begin_step = _check_int("begin_step", begin_step, 0)
        self.end_step = _check_int("end_step", end_step, -1)
        self.frequency = _check_int("frequency", frequency, 1)
        if self.end_step != -1 and self.end_step < self.begin_step:
            raise ValueError(
                "end_step must be -1 or >= begin_step. Received: "
                f"end_step={end_step}, begin_step={begin_step}"
            )

    @property
    def target_sparsity(self) -> float:
        return self._target

    @property
    def final_step(self) -> int:
        return self.begin_step

    def __call__(self, step):
        if not _is_tensor(step):
            return self._target if step >= self.begin_step else 0.0
        import tensorflow as tf

        on = tf.cast(step, tf.int64) >= self.begin_step
        return tf.where(on, tf.constant(self._target, tf.float32), tf.constant(0.0, tf.float32))

    def get_config(self) -> dict:
        return {
            "target_sparsity": self._target,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfopt")
class PolynomialDecay(PruningSchedule):
    """Raises sparsity from ``initial_sparsity`` to ``final_sparsity`` along a polynomial.

    ``s(t) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((t - begin_step) / (end_step - begin_step), 0, 1)``, the formula of tfmot's
    ``PolynomialDecay``. Masks are recomputed every ``frequency`` steps from ``begin_step`` and at
    ``end_step``; after ``end_step`` they stay fixed (training goes on with the final masks).

    Args:
        initial_sparsity: sparsity at ``begin_step``, in [0, 1).
        final_sparsity: sparsity at ``end_step``, in [0, 1).
        begin_step: the first step that prunes. Defaults to 0.
        end_step: the step at which ``final_sparsity`` is reached. Defaults to 1000.
        power: the exponent of the polynomial (3 prunes fast early). Defaults to 3.0.
        frequency: recompute the masks every this many steps. Defaults to 100.

    Raises:
        ValueError: for sparsities outside [0, 1), end_step <= begin_step, power <= 0 or
            frequency < 1.

    Example:
        >>> s = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, power=1.0)
        >>> round(s(50), 3), s(100)
        (0.4, 0.8)
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int = 0,
        end_step: int = 1000,
        power: float = 3.0,
        frequency: int = 100,
    ):
        self.initial_sparsity = _check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        self.begin_step = _check_int("begin_step", begin_step, 0)
        self.end_step = _check_int("end_step", end_step, 1)
        self.frequency = _check_int("frequency", frequency, 1)
        if self.end_step <= self.begin_step:
            raise ValueError(
                "end_step must be > begin_step. Received: "
                f"end_step={end_step}, begin_step={begin_step}"
            )
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or power <= 0:
            raise ValueError(f"power must be a number > 0. Received: power={power!r}")
        self.power = float(power)

    @property
    def target_sparsity(self) -> float:
        return self.final_sparsity

    @property
    def final_step(self) -> int:
        return self.end_step

    def __call__(self, step):
        span = float(self.end_step - self.begin_step)
        lo, hi = self.initial_sparsity, self.final_sparsity
        if not _is_tensor(step):
            if step < self.begin_step:
                return 0.0
            p = min(1.0, max(0.0, (step - self.begin_step) / span))
            return hi + (lo - hi) * (1.0 - p) ** self.power
        import tensorflow as tf

        t = tf.cast(step, tf.float32)
        p = tf.clip_by_value((t - self.begin_step) / span, 0.0, 1.0)
        value = hi + (lo - hi) * tf.pow(1.0 - p, self.power)
        return tf.where(t < self.begin_step, tf.constant(0.0, tf.float32), value)

    def get_config(self) -> dict:
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfopt")
class GradualCubic(PolynomialDecay):
    """Zhu & Gupta's gradual pruning (2017): ``PolynomialDecay`` with ``power=3``.

    ``s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3``, with ``t0 = begin_step``,
    ``n * dt = end_step - begin_step`` and ``dt = frequency``.

    Args:
        initial_sparsity: sparsity at ``begin_step``. Defaults to 0.0.
        final_sparsity: sparsity at ``end_step``. Defaults to 0.8.
        begin_step: the first step that prunes. Defaults to 0.
        end_step: the step at which ``final_sparsity`` is reached. Defaults to 1000.
        frequency: recompute the masks every this many steps. Defaults to 100.

    Raises:
        ValueError: as `PolynomialDecay`.

    Example:
        >>> GradualCubic(0.0, 0.8, begin_step=0, end_step=100)(100)
        0.8
    """

    def __init__(
        self,
        initial_sparsity: float = 0.0,
        final_sparsity: float = 0.8,
        begin_step: int = 0,
        end_step: int = 1000,
        frequency: int = 100,
    ):
        super().__init__(
            initial_sparsity, final_sparsity, begin_step, end_step, power=3.0, frequency=frequency
        )

    def get_config(self) -> dict:
        config = super().get_config()
        del config["power"]
        return config


def serialize(schedule: PruningSchedule) -> dict:
    """Returns the Keras serialization of a schedule (a JSON-able dict)."""
    return keras.saving.serialize_keras_object(schedule)


def deserialize(config) -> PruningSchedule:
    """Rebuilds a schedule from `serialize`'s output (or returns a schedule unchanged)."""
    if isinstance(config, PruningSchedule):
        return config
    schedule = keras.saving.deserialize_keras_object(config)
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(
            f"schedule must deserialize to a tfopt.prune.PruningSchedule. Received: {config!r}"
        )
    return schedule
