"""Pure losses: (logits, labels, mask) → (mean loss over unmasked examples, aux sums).

The aux sums (not means) let callers add them up over steps, devices and ragged last batches
and divide once at the end (each task's summarise, with to_host and loss_and_count), so a padded
example never counts.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def softmax_cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array, mask_B: jax.Array,
                          label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of integer labels, averaged over mask_B == 1; aux has loss/correct/count sums."""
  num_classes = logits_BxC.shape[-1]
  targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
  loss_B = optax.softmax_cross_entropy(logits_BxC.astype(jnp.float32), targets_BxC)
  count = mask_B.sum()
  loss_sum = (loss_B * mask_B).sum()
  correct = ((jnp.argmax(logits_BxC, -1) == labels_B) * mask_B).sum()
  aux = {"loss_sum": loss_sum, "correct": correct, "count": count}
  return loss_sum / jnp.maximum(count, 1.0), aux


def confusion_matrix(logits_BxC: jax.Array, labels_B: jax.Array, mask_B: jax.Array) -> jax.Array:
  """float32[C, C] counts of unmasked examples: row = true class, column = predicted class."""
  num_classes = logits_BxC.shape[-1]
  true_BxC = jax.nn.one_hot(labels_B, num_classes) * mask_B[:, None]
  pred_BxC = jax.nn.one_hot(jnp.argmax(logits_BxC, -1), num_classes)
  return true_BxC.T @ pred_BxC


def next_token_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                             mask_B: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy over every token of the unmasked rows; aux 'count' counts tokens."""
  loss_BxL = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxLxV.astype(jnp.float32), targets_BxL)
  weight_BxL = jnp.broadcast_to(mask_B[:, None], loss_BxL.shape)
  count = weight_BxL.sum()
  loss_sum = (loss_BxL * weight_BxL).sum()
  return loss_sum / jnp.maximum(count, 1.0), {"loss_sum": loss_sum, "count": count}


def to_host(sums: dict[str, Any]) -> dict[str, np.ndarray]:
  """Summed metrics as float64 host arrays, for a task's summarise()."""
  return {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}


def loss_and_count(sums: dict[str, np.ndarray]) -> dict[str, Any]:
  """The mean loss and the count it is over (examples, or tokens for a language model)."""
  count = float(sums["count"])
  return {"loss": float(sums["loss_sum"]) / max(count, 1.0), "count": int(count)}
