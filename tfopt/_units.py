"""Sizes written the way people write them: ``"64KB"``, ``"256 KiB"``, ``"1MB"``, ``4096``.

KB and KiB both mean 1024 bytes (and MB / MiB 1024 x 1024), as microcontroller datasheets use
them. Imports nothing heavy, so the CLI can check a size before TensorFlow loads.

Example:
    >>> parse_size("64KB"), parse_size("1.5 MiB"), parse_size(4096)
    (65536, 1572864, 4096)
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value, name: str = "size") -> int:
    """Bytes of ``value``: an int (bytes) or a string such as ``"64KB"``, ``"256KiB"``, ``"1MB"``,
    ``"4096"`` or ``"4096B"``.

    Args:
        value: the size.
        name: the argument's name, for the error message. Defaults to "size".

    Returns:
        The number of bytes (an int > 0).

    Raises:
        ValueError: not a size, or not positive:
            ``max_ram must be a size such as 64KB, 256KiB, 1MB or 4096 (bytes). Received: ...``.
    """
    rule = f"{name} must be a size such as 64KB, 256KiB, 1MB or 4096 (bytes), greater than 0"
    if isinstance(value, bool):
        raise ValueError(f"{rule}. Received: {name}={value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(str(value))
        if match is None or match.group(2).upper() not in _UNITS:
            raise ValueError(f"{rule}. Received: {name}={value!r}")
        number, unit = float(match.group(1)), match.group(2).upper()
    size = number * _UNITS[unit]
    if size < 1 or size != int(size):
        raise ValueError(f"{rule}, in whole bytes. Received: {name}={value!r}")
    return int(size)
