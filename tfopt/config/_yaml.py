"""YAML parsing for configs: plain YAML types only, no alias bombs, no duplicate keys, and
numbers as people write them (``1e-3`` is a float, although YAML 1.1 reads it as text).

``yaml.safe_load`` builds no Python objects, but it does follow aliases: a few hundred bytes of
nested anchors (the "billion laughs") describe 10**9 values, which exhaust memory as soon as
something walks them (validation, a copy, a JSON dump). `parse` measures the document's size
with aliases expanded before building it and refuses a document larger than `MAX_VALUES`, or one
that refers to itself.
"""

from __future__ import annotations

import re

import yaml

from tfopt.errors import ConfigError

# no hand-written config comes near this; an alias bomb is orders of magnitude above it
MAX_VALUES = 100_000


class _Cycle(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping and reads ``1e-3``,
    ``2E5`` and ``.5e-2`` as floats (YAML 1.2's rule: 1.1 needs a dot and a signed exponent)."""

    def construct_mapping(self, node, deep=False):
        first_line: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise ConfigError(
                        f"{self._source}: duplicate key {key!r} at line {line} (first at line "
                        f"{first_line[key]}); YAML would keep only the last: merge them into one"
                    )
                first_line[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


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
    loader = _Loader(text)
    loader._source = source
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
