"""Entry point: python -m jaxdl.main --config=configs/mnist.py[:preset] --workdir=DIR [--config.k=v].

Flags become a locked ConfigDict (ml_collections config_flags), and train.train_and_evaluate
does the rest. Every user mistake, in a flag or later, ends as one line on stderr and exit 1.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, optionally with a preset: configs/mnist.py:seed",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and metrics")


def _fail(message: str) -> None:
  print(f"jaxdl: error: {message}", file=sys.stderr)
  sys.exit(1)


def _last_line(error: BaseException) -> str:
  """config_flags wraps a config file's exception in a traceback text; its last line says it."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def _unknown_override(argv: list[str]) -> str | None:
  """Names the first --config.a.b=v override whose key the config file does not define."""
  spec = next(a[len("--config="):] for a in argv if a.startswith("--config="))
  path, _, preset = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("jaxdl_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(preset or None)
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node = config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
        return f"unknown config key {key!r} in {arg} (valid keys there: {valid})"
      node = node[part]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with each failure turned into one line naming the flag or key."""
  for arg in argv[1:]:  # a missing config file would otherwise surface as an obscure error
    if arg.startswith("--config=") and not os.path.isfile(arg[len("--config="):].split(":")[0]):
      _fail(f"{arg}: no such config file")
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_last_line(e))
  except (AttributeError, KeyError):  # config_flags reports an unknown key as either
    _fail(_unknown_override(argv) or "unknown config key in the --config.* overrides")
  except (TypeError, ValueError) as e:
    _fail(_last_line(e))
  if _CONFIG.value is None:
    _fail("--config is required, e.g. --config=configs/mnist.py")
  if not _WORKDIR.value:
    _fail("--workdir is required, e.g. --workdir=runs/mnist")
  if not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
    # jaxdl prints its own progress; library INFO chatter (Orbax, XLA) only with --verbosity=0.
    logging.set_verbosity(logging.WARNING)
  return rest


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  # Imported here so that flag errors are reported before the slower jax/flax/orbax imports.
  from jaxdl import train  # pylint: disable=g-import-not-at-top
  from jaxdl.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    _fail(str(e))
  except KeyboardInterrupt:
    print("jaxdl: interrupted; re-run the same command to resume from the newest checkpoint",
          file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
