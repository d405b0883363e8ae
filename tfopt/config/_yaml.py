"""YAML parsing for configs: plain YAML types only, and no alias bombs.

``yaml.safe_load`` builds no Python objects, but it does follow aliases: a few hundred bytes of
nested anchors (the "billion laughs") describe 10**9 values, which exhaust memory as soon as
something walks them (validation, a copy, a JSON dump). `parse` measures the document's size
with aliases expanded before building it and refuses a document larger than `MAX_VALUES`, or one
that refers to itself.
"""

from __future__ import annotations

import yaml

from tfopt.errors import ConfigError

# no hand-written config comes near this; an alias bomb is orders of magnitude above it
MAX_VALUES = 100_000


class _Cycle(Exception):
    pass


def _expanded_size(node, memo: dict[int, int], active: set[int]) -> int:
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _Cycle
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo, active) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(
            _expanded_size(k, memo, active) + _expanded_size(v, memo, active) for k, v in node.value
        )
    else:
        size = 1
    active.discard(key)
    memo[key] = size
    return size


def parse(text: str, *, source: str = "config"):
    """Parses YAML ``text`` into plain Python values (`yaml.SafeLoader`).

    Raises:
        ConfigError: the document expands (through aliases) to more than `MAX_VALUES` values,
            or an alias refers to a value that contains it.
        yaml.YAMLError: the text is not valid YAML.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size = _expanded_size(node, {}, set())
        except _Cycle:
            raise ConfigError(
                f"{source}: invalid YAML: an alias refers to a value that contains it (a cycle)"
            ) from None
        if size > MAX_VALUES:
            raise ConfigError(
                f"{source}: refused: the YAML expands to {size:,} values through its aliases "
                f"(&anchor / *alias), more than the {MAX_VALUES:,} a config may hold"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()
