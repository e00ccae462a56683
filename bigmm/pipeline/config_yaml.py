"""Reading a config file's YAML safely: no Python object tags (``yaml.SafeLoader``), a bounded
size, and a bounded number of nodes once YAML aliases are expanded."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import ConfigError, missing_reason


#: a config is a few kilobytes; these bound what a hostile or broken file can make us build
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000


def _expanded_nodes(node, memo: dict, active: set) -> int:
    """Nodes of the document once its aliases are expanded (aliases share nodes, so a 600-byte
    file of nested aliases can stand for billions)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ConfigError("the configuration refers to itself through a YAML alias")
    active.add(key)
    if isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_nodes(k, memo, active) + _expanded_nodes(v, memo, active) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_nodes(v, memo, active) for v in node.value)
    else:
        total = 1
    active.discard(key)
    memo[key] = total
    return total


def read_yaml(path: Path):
    """The YAML document of a config file, safely: no Python tags (SafeLoader), at most
    :data:`MAX_CONFIG_BYTES` of text and :data:`MAX_CONFIG_NODES` nodes after alias expansion."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} {missing_reason(path)}")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is {size} bytes; a bigmm config is a few kilobytes (at most "
                              f"{MAX_CONFIG_BYTES} bytes): is this the right file?")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path} as text ({exc})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_nodes(node, {}, set())
        if n > MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: its YAML aliases expand to {n} nodes (at most {MAX_CONFIG_NODES}); "
                              f"a bigmm config needs no nested aliases: write the values out")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    finally:
        loader.dispose()
