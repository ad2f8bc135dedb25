"""Nested parameter dicts <-> flat dicts keyed by "/"-joined T5X target paths.

The checkpoint readers and writers speak flat names
("encoder/layers_0/attention/query/kernel"); Flax speaks nested dicts.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn


def unbox(tree: Any) -> Any:
    """Strips `nn.LogicallyPartitioned` boxes, leaving plain arrays."""
    return nn.meta.unbox(tree)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}. Keys must not contain "/"."""
    flat = {}
    for key, value in tree.items():
        if "/" in key:
            raise ValueError(f"parameter key {key!r} under {prefix or '/'!r} contains '/'")
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b": x} -> {"a": {"b": x}}; the inverse of `flatten`."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"parameter {name!r}: {p!r} is both a leaf and a prefix")
        node[leaf] = value
    return tree
