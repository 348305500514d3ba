"""Weights by name: a run's variables as flat {dotted name: array}, the names every weights file
and every init_from check uses.

  {'params': {'Conv_0': {'kernel': k}}, 'batch_stats': {...}}  <->  {'params.Conv_0.kernel': k}

A name is the variables' tree path joined by '.': the collection first ('params', or model state
such as 'batch_stats'), then the modules' and the array's names. An NNX list item's int key is
written as its digits ('layers.0.kernel'); runs.load turns such keys back into ints for NNX.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from jaxdl.errors import UserError

SEP = "."


def _key(entry) -> str:
  """One path entry's name: a dict key (str, or an NNX list's int), an attribute, an index."""
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flatten(variables: Mapping[str, Any]) -> dict[str, Any]:
  """{dotted name: leaf} of a variables tree, in the tree's order. A key holding the separator
  would make two arrays' names ambiguous: a UserError naming it."""
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    keys = [_key(entry) for entry in path]
    bad = next((k for k in keys if SEP in k or not k), None)
    if bad is not None:
      raise UserError(f"the variable {keys!r} has the key {bad!r}: weights are named by "
                      f"their tree path joined with {SEP!r}, so a key must be non-empty and "
                      f"hold no {SEP!r}")
    flat[SEP.join(keys)] = leaf
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The nested dict of `flatten`'s names (every key a str)."""
  tree: dict[str, Any] = {}
  for name, leaf in flat.items():
    *parents, last = name.split(SEP)
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise UserError(f"the weights name both an array and a group {name!r}")
    node[last] = leaf
  return tree


def describe(leaf) -> str:
  """An array's shape and dtype as the one-line errors print them: '(128, 10) float32'."""
  return f"{tuple(np.shape(leaf))} {np.dtype(leaf.dtype).name}"
