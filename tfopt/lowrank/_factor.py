"""`factorize`: SVD of Dense/Conv kernels into two thinner layers, with the rank rule and report."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tfopt._backend import check_model, import_keras
from tfopt._layers import classes_with, guard, spec_of
from tfopt._rewrite import GraphRewrite, Report, attach_report, is_graph_model, layer_filter

keras = import_keras()
L = keras.layers

Filters = str | Sequence[str] | Callable[[object], bool] | None


def supported() -> list[str]:
    """The layer classes `factorize` splits: those whose spec says ``lowrank`` (tfopt._layers)."""
    return [c.__name__ for c in classes_with("lowrank")]


SUPPORTED = tuple(classes_with("lowrank"))  # Keras's own classes


def _check_fraction(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1]. Received: {name}={value!r}")


def choose_rank(
    singular_values, *, energy: float | None = None, rank_ratio: float | None = None
) -> int:
    """The rank that the rule keeps for a kernel with these singular values.

    ``energy``: the smallest ``r`` whose ``s[:r]**2`` sum to at least ``energy`` of ``sum(s**2)``
    (the Frobenius norm of the discarded part is then at most ``sqrt(1 - energy)`` of the
    kernel's). ``rank_ratio``: ``ceil(rank_ratio * min(m, n))``. Exactly one is given.

    Args:
        singular_values: the kernel's singular values, in decreasing order.
        energy: the fraction of the squared spectrum to keep, in (0, 1]. Defaults to None.
        rank_ratio: the fraction of the full rank to keep, in (0, 1]. Defaults to None.

    Returns:
        The rank, between 1 and ``len(singular_values)``.

    Raises:
        ValueError: both or neither rule given, or a value outside (0, 1].

    Example:
        >>> choose_rank([3.0, 1.0, 0.0], energy=0.9)   # 9 / 10 of the energy in the first value
        1
    """
    if (energy is None) == (rank_ratio is None):
        raise ValueError(
            "Give exactly one of energy= and rank_ratio=. "
            f"Received: energy={energy!r}, rank_ratio={rank_ratio!r}"
        )
    _check_fraction("energy", energy)
    _check_fraction("rank_ratio", rank_ratio)
    s = np.asarray(singular_values, dtype="float64")
    full = len(s)
    if rank_ratio is not None:
        return max(1, min(full, math.ceil(rank_ratio * full - 1e-9)))
    power = s**2
    total = power.sum()
    if total == 0.0:
        return 1
    covered = np.cumsum(power) / total
    return int(min(full, np.searchsorted(covered, energy - 1e-12) + 1))


def factor_matrix(w, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best rank-``rank`` factorization ``w ~ a @ b`` (truncated SVD, balanced split).

    ``a = U[:, :r] * sqrt(s[:r])`` and ``b = sqrt(s[:r])[:, None] * Vt[:r]``; by Eckart-Young,
    ``||w - a @ b||_F**2 == sum(s[r:]**2)``.

    Args:
        w: a 2-D matrix ``(m, n)``.
        rank: ``r``, between 1 and ``min(m, n)``.

    Returns:
        ``(a, b, s)``: ``a`` is ``(m, r)``, ``b`` is ``(r, n)`` (float32), ``s`` every singular
        value of ``w`` (float64).

    Raises:
        ValueError: ``w`` is not 2-D or ``rank`` is out of range.
    """
    w = np.asarray(w, dtype="float64")
    if w.ndim != 2:
        raise ValueError(f"w must be a 2-D matrix. Received: w.shape={w.shape}")
    if not 1 <= rank <= min(w.shape):
        raise ValueError(
            f"rank must be in [1, {min(w.shape)}] for w of shape {w.shape}. Received: rank={rank!r}"
        )
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    root = np.sqrt(s[:rank])
    a = (u[:, :rank] * root).astype("float32")
    b = (root[:, None] * vt[:rank]).astype("float32")
    return a, b, s


@dataclass
class _Decision:
    """How one layer is factorized: rank ``r`` of its ``(m, n)`` kernel and the two factors."""

    rank: int
    a: np.ndarray  # (m, r)
    b: np.ndarray  # (r, n)

    def layers(self, layer):
        """Two new, unbuilt layers standing for ``layer``: ``r`` units/filters, then the rest."""
        cfg = layer.get_config()
        first = {
            **cfg,
            "name": f"{layer.name}_lowrank",
            "use_bias": False,
            "activation": None,
            "activity_regularizer": None,
        }
        second = dict(cfg)
        first[spec_of(layer).width] = self.rank  # "units", "filters"
        if "kernel_size" in cfg:  # a convolution: the second layer is its 1x1 pointwise half
            nd = len(layer.kernel_size)
            second.update(
                kernel_size=(1,) * nd, strides=(1,) * nd, padding="valid", dilation_rate=(1,) * nd
            )
        for c in (first, second):
            c.pop("lora_rank", None)
            c.pop("lora_alpha", None)
        return type(layer).from_config(first), type(layer).from_config(second)

    def set_weights(self, layer, u, v) -> None:
        kernel_shape = tuple(layer.kernel.shape)
        u.set_weights([self.a.reshape(*kernel_shape[:-1], self.rank)])
        v_kernel = self.b.reshape(*(1,) * (len(kernel_shape) - 2), self.rank, kernel_shape[-1])
        weights = [v_kernel]
        if layer.use_bias:
            weights.append(keras.ops.convert_to_numpy(layer.bias))
        v.set_weights(weights)


def _why_not(layer) -> str:
    spec = spec_of(layer)
    if spec is None or not spec.lowrank:
        names = ", ".join(supported())
        return f"{type(layer).__name__} is not factorizable (supported: {names})"
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups})"
    return guard(layer, spec) or ""


class _Planner:
    """Decides (once per layer) whether and how to factorize it, and writes the report."""

    def __init__(self, select, energy, rank_ratio, report: Report):
        self.select, self.energy, self.rank_ratio, self.report = select, energy, rank_ratio, report
        self.decisions: dict[int, _Decision | None] = {}

    def __call__(self, layer) -> _Decision | None:
        if id(layer) not in self.decisions:
            self.decisions[id(layer)] = self._decide(layer)
        return self.decisions[id(layer)]

    def _decide(self, layer) -> _Decision | None:
        if isinstance(layer, keras.Model) or not layer.weights:
            return None
        reason = _why_not(layer)
        if not reason and not self.select(layer):
            reason = "excluded by filters"
        if reason:
            self.report.skip(layer, reason)
            return None
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype="float32")
        m, n = int(np.prod(kernel.shape[:-1])), int(kernel.shape[-1])
        s = np.linalg.svd(kernel.reshape(m, n).astype("float64"), compute_uv=False)
        r = choose_rank(s, energy=self.energy, rank_ratio=self.rank_ratio)
        kept = float((s[:r] ** 2).sum() / max((s**2).sum(), 1e-300))
        if r * (m + n) >= m * n:
            self.report.skip(
                layer,
                f"rank {r} of {min(m, n)} ({kept:.1%} energy) saves nothing: "
                f"r*(m+n) = {r * (m + n)} >= m*n = {m * n} weights ({m}x{n} kernel)",
            )
            return None
        a, b, _ = factor_matrix(kernel.reshape(m, n), r)
        self.report.change(
            layer,
            f"rank {r} of {min(m, n)} ({kept:.1%} energy): {m}x{n} kernel, "
            f"{m * n} -> {r * (m + n)} weights",
        )
        self.report.details.setdefault("ranks", {})[layer.name] = r
        return _Decision(r, a, b)


class _Factorize(GraphRewrite):
    """The rewriter's graph walk, with each factorized layer called as two layers."""

    def __init__(self, model, action, planner: _Planner):
        super().__init__(model, action)
        self.planner = planner
        self.pairs: dict[int, tuple] = {}

    def nested(self, model):
        return _Factorize(model, self.action, self.planner).run() if is_graph_model(model) else None

    def on_node(self, node, args, kwargs):
        op = node.operation
        decision = self.planner(op) if isinstance(op, L.Layer) else None
        if decision is None:
            return self.call(op, args, kwargs)
        pair = self.pairs.get(id(op))
        if pair is None:  # a shared layer stays shared: one pair per original layer
            pair = self.pairs[id(op)] = decision.layers(op)
            outputs = pair[1](pair[0](*args, **kwargs))
            decision.set_weights(op, *pair)
            return outputs
        return pair[1](pair[0](*args, **kwargs))


def factorize(
    model,
    *,
    energy: float | None = 0.9,
    rank_ratio: float | None = None,
    filters: Filters = None,
):
    """Returns a copy of ``model`` whose Dense/Conv kernels are replaced by low-rank factors.

    For each selected Dense, Conv1D, Conv2D or Conv3D layer, the kernel reshaped to ``(m, n)``
    (``m = kernel size x c_in``, ``n`` = units or filters) is factored by a truncated SVD at the
    rank `choose_rank` picks; the layer becomes two plain layers, ``<name>_lowrank`` (``r``
    units, or ``r`` filters with the layer's kernel size, strides, padding and dilation; no bias,
    no activation) and ``<name>`` (a Dense, or a 1x1 convolution, with the layer's bias and
    activation). A layer is factorized only when the rank saves weights and MACs,
    ``r * (m + n) < m * n``; otherwise it is reported as skipped with the numbers. The user's model
    is not changed. At full rank the copy computes what the model computes (to float rounding).

    The returned model has ``tfopt_report`` (a `tfopt.Report`, technique ``"lowrank"``): each
    layer with weights is changed (rank, energy kept, weights before and after) or skipped (why);
    ``details`` holds the rule, the ``ranks`` and the model's ``params_before``/``params_after``
    and ``macs_before``/``macs_after`` (`tfopt._measure`).

    Args:
        model: a built Sequential or functional Keras 3 model (nested models are handled).
        energy: keep the singular values covering this fraction of the squared spectrum, in
            (0, 1]. Defaults to 0.9 (ignored when ``rank_ratio`` is given).
        rank_ratio: keep this fraction of each kernel's full rank instead, in (0, 1].
            Defaults to None.
        filters: which layers to factorize: a regex searched in the layer name, a list of regexes,
            or a callable ``layer -> bool``. Defaults to None (every supported layer).

    Returns:
        A new functional ``keras.Model`` of plain Keras layers.

    Raises:
        ValueError: ``energy`` or ``rank_ratio`` outside (0, 1].
        TypeError: ``model`` is not a Keras 3 model, is subclassed, or bad ``filters``.

    Example:
        >>> small = tfopt.lowrank.factorize(model, energy=0.9)
        >>> small.tfopt_report.details["ranks"]
        {'fc1': 12}
    """
    from tfopt._measure import count

    check_model(model)
    if rank_ratio is not None:
        energy = None
    choose_rank([1.0], energy=energy, rank_ratio=rank_ratio)  # validates the rule
    if not is_graph_model(model):
        raise TypeError(
            "factorize() turns one layer into two, which needs a graph of layers: it takes a "
            f"Sequential or functional model, not a subclassed model ({type(model).__module__}."
            f"{type(model).__name__}). Build the model with the functional API."
        )
    report = Report("lowrank", details={"energy": energy, "rank_ratio": rank_ratio})
    planner = _Planner(layer_filter(filters), energy, rank_ratio, report)
    new = _Factorize(model, "factorize()", planner).run()
    before, after = count(model), count(new)
    report.details.update(
        params_before=before["params"],
        params_after=after["params"],
        macs_before=before["macs"],
        macs_after=after["macs"],
    )
    return attach_report(new, report)
