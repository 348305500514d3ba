"""The train state and the two pure steps: (state, batch) → (state, metrics) and → sums.

Both are plain top-level functions; `train.py` binds the model and optimizer with
functools.partial and compiles them with jax.jit, donating the state.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl import losses
from jaxdl.data.augment import random_shift


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, as one pytree: what a checkpoint saves and a resume restores."""
  step: jax.Array       # int32[]: the number of updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array        # uint32[2]: the run's base key; step t uses fold_in(rng, t)


def create_state(model: nn.Module, tx: optax.GradientTransformation, sample_batch: dict,
                 seed: int) -> TrainState:
  """Initialises params from `seed`; the sample batch only fixes shapes."""
  # A raw uint32 key (not a typed key array) so Orbax stores it as an ordinary array.
  init_rng, base_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init({"params": init_rng}, sample_batch["image"], train=False)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=base_rng)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, label_smoothing: float,
               max_shift: int) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on one global batch; metrics are sums over its unmasked examples."""
  # Every random choice of this step derives from the base key and the step number, so a
  # resumed run draws exactly what the uninterrupted one did.
  shift_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  images = random_shift(batch["image"], shift_rng, max_shift)

  def loss_fn(params):
    logits_BxC = model.apply({"params": params}, images, train=True,
                             rngs={"dropout": dropout_rng})
    return losses.softmax_cross_entropy(logits_BxC, batch["label"], batch["mask"],
                                        label_smoothing)

  (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        opt_state=opt_state)
  return state, aux


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              model: nn.Module) -> dict[str, jax.Array]:
  """Sums of loss, correct predictions and count over the batch's unmasked examples."""
  logits_BxC = model.apply({"params": state.params}, batch["image"], train=False)
  _, aux = losses.softmax_cross_entropy(logits_BxC, batch["label"], batch["mask"])
  return aux
