"""Weights by name: a run's variables as flat {dotted name: array}, the names every weights file
and every init_from check uses; and the weights file itself (safetensors), written by
python -m jaxdl.export, read by `read_file` (jaxdl.load of a .safetensors path, init_from).

  {'params': {'Conv_0': {'kernel': k}}, 'batch_stats': {...}}  <->  {'params.Conv_0.kernel': k}

A name is the variables' tree path joined by '.': the collection first ('params', or model state
such as 'batch_stats'), then the modules' and the array's names. An NNX list item's int key is
written as its digits ('layers.0.kernel'); runs.load turns such keys back into ints for NNX.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import jax  # its import registers ml_dtypes' bfloat16 with NumPy, which safe_open needs
import numpy as np
import safetensors
import safetensors.numpy

from jaxdl import files
from jaxdl.errors import UserError, first_line

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


# A weights file: safetensors (https://github.com/huggingface/safetensors), the arrays under
# their `flatten` names, and in its metadata (str -> str; JSON where a value is structured)
# what rebuilds the model without the workdir. python -m jaxdl.export writes it.
META_VERSION = "jaxdl_version"  # the jaxdl that wrote it
META_CONFIG = "config"          # JSON: the run's resolved config (config.json)
META_MODEL_INFO = "model_info"  # JSON: models.get's kwargs from the data (model_info.json)
META_FILES = "files"            # JSON {name: text}: the task's files (vocab.json, classes.json)
META_STEP = "step"              # the checkpoint's step, as digits
META_WHICH = "which"            # which checkpoint was asked for: latest, best, or a step
META_STACKED = "stacked"        # JSON {name prefix: layers} of the layers scanned on axis 0
META_UNSTACKED = "unstacked"    # 'true': those layers are written one tensor per layer
SUFFIX = ".safetensors"


def unstack(flat: Mapping[str, Any], stacked: Mapping[str, int]) -> dict[str, Any]:
  """`flat` with each array under a prefix of `stacked` ({'params.blocks': 4}, its leading
  axis the layers) split into one array per layer, the index inserted after the prefix:
  'params.blocks.attn.kernel' [4, D, D] -> 'params.blocks.0.attn.kernel' [D, D], ... (as
  PyTorch names a ModuleList's layers)."""
  out = {}
  for name, x in flat.items():
    prefix = _prefix(name, stacked)
    if prefix is None:
      out[name] = x
      continue
    rest = name[len(prefix):]
    if np.shape(x)[:1] != (stacked[prefix],):
      raise ValueError(f"{name} {describe(x)}: not {stacked[prefix]} layers on its first axis")
    for i in range(stacked[prefix]):
      out[f"{prefix}{SEP}{i}{rest}"] = x[i]
  return out


def restack(flat: Mapping[str, Any], stacked: Mapping[str, int], where: str) -> dict[str, Any]:
  """`unstack` undone: the layers' arrays stacked again on a leading axis. A layer missing
  from `flat` is a UserError naming `where` (the file)."""
  out, layers = {}, {}
  for name, x in flat.items():
    prefix = _prefix(name, stacked)
    if prefix is None:
      out[name] = x
      continue
    index, _, rest = name[len(prefix) + 1:].partition(SEP)
    if not index.isdigit() or not rest:
      raise UserError(f"{where}: {name!r} is under the unstacked layers {prefix!r} but has no "
                      f"layer index after it ({prefix}.INDEX.NAME)")
    layers.setdefault(f"{prefix}{SEP}{rest}", {})[int(index)] = x
  for name, by_index in layers.items():
    count = stacked[_prefix(name, stacked)]
    if sorted(by_index) != list(range(count)):
      raise UserError(f"{where}: {name!r} has layers {sorted(by_index)}, not 0..{count - 1}")
    out[name] = np.stack([by_index[i] for i in range(count)])
  return out


def _prefix(name: str, stacked: Mapping[str, int]) -> str | None:
  return next((p for p in stacked if name.startswith(p + SEP)), None)


def write_file(path: str, flat: Mapping[str, Any], metadata: Mapping[str, str]) -> int:
  """Writes {name: array} and `metadata` as a safetensors file, atomically (a temporary file
  renamed; a gs:// object write is atomic by itself), and returns its size in bytes.

  Every array is made C-contiguous first: safetensors.numpy passes an array's data pointer
  and byte count as they are, so a transposed or strided view was written with wrong values
  and no error (safetensors issue 825; seen with safetensors 0.8.0)."""
  tensors = {name: np.ascontiguousarray(x) for name, x in flat.items()}
  if files.is_url(path):
    data = safetensors.numpy.save(tensors, metadata=dict(metadata))
    files.Path(path).write_bytes(data)
    return len(data)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=files.TMP_PREFIX,
                             suffix=SUFFIX)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
    os.close(fd)
    safetensors.numpy.save_file(tensors, tmp, metadata=dict(metadata))
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):  # a full disk: no temporary file left behind
      os.remove(tmp)
    raise
  return os.path.getsize(path)


def read_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(variables, meta) of a safetensors file, local or gs://.

  variables: the nested dict of NumPy arrays (`unflatten` of the names; layers written one per
  tensor by `jaxdl.export --unstack` stacked again, as the model holds them).
  meta: {'config': dict, 'model_info': dict, 'files': {name: text}, 'version': str,
  'step': int, 'which': str, 'stacked': {prefix: layers}, 'metadata': the raw str->str}; for a
  file jaxdl did not write, 'config', 'model_info', 'version', 'step' and 'which' are None and
  'files' and 'stacked' empty. A missing or unreadable file is a UserError naming it."""
  if not files.exists(path):
    raise UserError(f"{path}: not found")
  if files.is_url(path):
    # safe_open reads a local file only (and safetensors.numpy.load, from bytes, knows no
    # bfloat16: KeyError 'BF16' in 0.8.0), so an object is read through a temporary copy.
    with tempfile.NamedTemporaryFile(suffix=SUFFIX) as copy:
      copy.write(files.Path(path).read_bytes())
      copy.flush()
      flat, metadata = _read_local(copy.name, path)
  else:
    flat, metadata = _read_local(path, path)
  meta = _meta(metadata, path)
  if metadata.get(META_UNSTACKED) == "true":
    flat = restack(flat, meta["stacked"], path)
  return unflatten(flat), meta


_MAX_HEADER = 100_000_000  # bytes: safetensors' own limit on a header


def read_metadata(path: str) -> dict[str, Any]:
  """read_file's `meta` alone, from the file's header: a gs:// object is not read whole.

  The header is the format's first 8 bytes (its length, little-endian) and that many bytes of
  JSON, whose '__metadata__' is the str->str metadata: read here by hand, as safetensors reads
  only a local file, and whole objects are what a vocabulary's lookup should not download."""
  if not files.exists(path):
    raise UserError(f"{path}: not found")
  with files.Path(path).open("rb") as f:
    size = int.from_bytes(f.read(8), "little")
    try:
      if not 0 < size <= _MAX_HEADER:
        raise ValueError(f"a header of {size} bytes")
      header = json.loads(f.read(size).decode("utf-8"))
      metadata = header.get("__metadata__") or {}
      if not isinstance(metadata, dict):
        raise ValueError("its __metadata__ is not an object")
    except (ValueError, AttributeError) as e:  # AttributeError: a header that is no object
      raise UserError(f"{path}: not a safetensors file ({first_line(e)})") from None
  return _meta(metadata, path)


def _meta(metadata: Mapping[str, str], path: str) -> dict[str, Any]:
  """read_file's `meta` of a file's str->str metadata."""
  meta = {"config": _json(metadata, META_CONFIG, path),
          "model_info": _json(metadata, META_MODEL_INFO, path),
          "files": _json(metadata, META_FILES, path) or {},
          "version": metadata.get(META_VERSION),
          "step": int(metadata[META_STEP]) if metadata.get(META_STEP, "").isdigit() else None,
          "which": metadata.get(META_WHICH),
          "stacked": _json(metadata, META_STACKED, path) or {},
          "metadata": dict(metadata)}
  for key in ("files", "stacked"):
    if not isinstance(meta[key], dict):
      raise UserError(f"{path}: its metadata {key!r} is not a JSON object")
  return meta


def _read_local(path: str, where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  try:
    with safetensors.safe_open(path, framework="np") as f:
      return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
  except (safetensors.SafetensorError, ValueError, TypeError) as e:
    raise UserError(f"{where}: not a safetensors file ({first_line(e)})") from None


def _json(metadata: Mapping[str, str], key: str, where: str):
  if key not in metadata:
    return None
  try:
    return json.loads(metadata[key])
  except ValueError as e:
    raise UserError(f"{where}: its metadata {key!r} is not JSON ({first_line(e)})") from None
