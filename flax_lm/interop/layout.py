"""Scanned <-> unscanned layer layouts of a parameter tree (numpy on the host).

Unscanned models name each layer's parameters `{prefix}_{i}`; scanned ones hold one
tree under `{scanned_name}` whose arrays lead with the layer axis.
"""

import numpy as np


def stack_layers(params: dict, n_layers: int, prefix: str, scanned_name: str) -> dict:
    """Moves `{prefix}_0 .. {prefix}_{n-1}` into one stacked tree `{scanned_name}` (a new dict)."""
    params = dict(params)
    layers = [params.pop(f"{prefix}_{i}") for i in range(n_layers)]
    params[scanned_name] = _stack(layers)
    return params


def unstack_layers(params: dict, n_layers: int, prefix: str, scanned_name: str) -> dict:
    """The inverse of `stack_layers`: `{scanned_name}` split into `{prefix}_0 .. {prefix}_{n-1}` (a new dict)."""
    out = {k: v for k, v in params.items() if k != scanned_name}
    out.update({f"{prefix}_{i}": layer(params, i, True, prefix, scanned_name) for i in range(n_layers)})
    return out


def get(tree: dict, path: tuple):
    """The value at `path` (a tuple of keys) of a nested dict."""
    for key in path:
        tree = tree[key]
    return tree


def put(tree: dict, path: tuple, value) -> None:
    """Sets the value at `path` of a nested dict, making the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def layer(params: dict, i: int, scanned: bool, prefix: str, scanned_name: str) -> dict:
    """Layer `i`'s parameters in either layout."""
    if scanned:
        return _index(params[scanned_name], i)
    return params[f"{prefix}_{i}"]


def _stack(trees: list):
    if isinstance(trees[0], dict):
        return {k: _stack([t[k] for t in trees]) for k in trees[0]}
    return np.stack(trees)


def _index(tree, i):
    if isinstance(tree, dict):
        return {k: _index(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]
