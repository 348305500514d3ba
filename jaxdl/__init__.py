"""jaxdl: pure-function Flax training with compiled steps, ml-collections configs and Orbax checkpoints."""

__version__ = "0.1.0"
