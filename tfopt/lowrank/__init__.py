"""Low-rank factorization: a Dense or Conv kernel ``W`` becomes two thinner layers ``A @ B``.

`factorize` takes the truncated SVD of each selected kernel (reshaped to ``(k*k*c_in, c_out)``
for a convolution), picks the rank with `choose_rank` (the singular values that cover ``energy``
of the squared spectrum, or a fixed ``rank_ratio``) and, where that rank really saves params and
MACs (``r * (m + n) < m * n``), replaces the layer by two plain Keras layers: a Dense with ``r``
units (a convolution with ``r`` filters and the layer's kernel size, strides and padding), then a
Dense (a 1x1 convolution) with the layer's bias and activation. Fine-tune afterwards, as with the
other techniques; the result is plain Keras layers, ready for QAT or export.

Example:
    >>> small = tfopt.lowrank.factorize(model, energy=0.9)
    >>> print(small.tfopt_report)
    >>> small.compile("adam", loss=loss, metrics=["accuracy"]); small.fit(x, y, epochs=2)
"""

from tfopt.lowrank._factor import SUPPORTED, choose_rank, factor_matrix, factorize

__all__ = ["SUPPORTED", "choose_rank", "factor_matrix", "factorize"]
