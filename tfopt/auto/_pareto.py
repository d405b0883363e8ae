"""Pareto front of candidates over several objectives (exact, no tolerance)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_OBJECTIVES: dict[str, str] = {"accuracy": "max", "gzip_bytes": "min", "latency_ms": "min"}


def front_objectives(points: Sequence[Mapping]) -> dict[str, str]:
    """The objectives of `tfopt.auto`'s front: `DEFAULT_OBJECTIVES`, plus TFLite Micro's arena
    and the flash bytes (both min) when every point has them (RAM and flash are measured)."""
    objectives = dict(DEFAULT_OBJECTIVES)
    for key in ("arena_bytes", "flash_bytes"):
        if points and all(p.get(key) is not None for p in points):
            objectives[key] = "min"
    return objectives


def _check(objectives: Mapping[str, str]) -> None:
    if not objectives:
        raise ValueError("objectives must name at least one key. Received: objectives={}")
    for key, sense in objectives.items():
        if sense not in ("min", "max"):
            raise ValueError(
                f"objectives[{key!r}] must be 'min' or 'max'. Received: objectives={dict(objectives)}"
            )


def dominates(a: Mapping, b: Mapping, objectives: Mapping[str, str] = DEFAULT_OBJECTIVES) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every objective and better on one.

    Args:
        a: a point, e.g. ``{"accuracy": 0.9, "gzip_bytes": 8000, "latency_ms": 0.1}``.
        b: another point.
        objectives: key -> ``"min"`` or ``"max"``. Defaults to accuracy (max), gzip_bytes (min),
            latency_ms (min).

    Returns:
        True if ``a`` dominates ``b``.

    Example:
        >>> dominates({"accuracy": 0.9, "gzip_bytes": 10, "latency_ms": 1},
        ...           {"accuracy": 0.8, "gzip_bytes": 10, "latency_ms": 1})
        True
    """
    _check(objectives)
    better = False
    for key, sense in objectives.items():
        x, y = float(a[key]), float(b[key])
        if sense == "min":
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better = True
    return better


def pareto_front(
    points: Sequence[Mapping], objectives: Mapping[str, str] = DEFAULT_OBJECTIVES
) -> list[int]:
    """Indices of the points that no other point dominates, in input order.

    Points equal on every objective do not dominate each other, so all of them are kept.

    Args:
        points: mappings holding every key of ``objectives``.
        objectives: key -> ``"min"`` or ``"max"``. Defaults to accuracy (max), gzip_bytes (min),
            latency_ms (min).

    Returns:
        The indices of the non-dominated points.

    Raises:
        ValueError: an objective that is neither "min" nor "max", or no objectives.
        KeyError: a point lacks an objective's key.

    Example:
        >>> pareto_front([{"accuracy": 0.9, "gzip_bytes": 9, "latency_ms": 1},
        ...               {"accuracy": 0.8, "gzip_bytes": 5, "latency_ms": 1},
        ...               {"accuracy": 0.8, "gzip_bytes": 9, "latency_ms": 1}])
        [0, 1]
    """
    _check(objectives)
    for i, p in enumerate(points):
        for key in objectives:
            if key not in p:
                raise KeyError(f"points[{i}] has no {key!r} (objectives={dict(objectives)})")
    return [
        i
        for i, p in enumerate(points)
        if not any(dominates(q, p, objectives) for j, q in enumerate(points) if j != i)
    ]
