"""The model of the loop's tests: a 2-layer MLP for 28x28 images, named as a user names their
own model (`--config.model.name=small_models:mlp`; tests/ is on the tests' PYTHONPATH).

The tests of the loop (resume, faults, parallel modes, several processes, gs://) are about the
loop, not the model: this MLP compiles in a fraction of the seed CNN's time (6 CPU-s less per
new program), which the suite pays for every config it trains. The CNN has its own tests
(test_models.py) and trains end to end where a test names it.
"""

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  hidden: int = 32
  num_classes: int = 10
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(nn.Dense(self.hidden)(x)))
    return nn.Dense(self.num_classes)(x)


def mlp(model_config, *, num_classes: int) -> nn.Module:
  """The MNIST config's model block, read for its dropout rate (the step rng's use)."""
  return MLP(num_classes=num_classes, dropout=model_config.dropout)
