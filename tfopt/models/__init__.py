"""Reference models by name, and loading a user's `.keras` file.

Example:
    >>> model = tfopt.models.get("mnist1d_cnn")
    >>> model.output_shape
    (None, 10)
"""

from tfopt.models._zoo import MODELS, get, load

__all__ = ["MODELS", "get", "load"]
