"""jaxdl: pure-function Flax training with compiled steps, ml-collections configs and Orbax checkpoints."""

__version__ = "0.1.0"


def __getattr__(name: str):
  """`jaxdl.load` (jaxdl/runs.py), imported on first use: `import jaxdl` stays free of jax."""
  if name == "load":
    from jaxdl import runs  # pylint: disable=g-import-not-at-top
    return runs.load
  raise AttributeError(f"module 'jaxdl' has no attribute {name!r}")
