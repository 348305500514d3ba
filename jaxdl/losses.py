"""Pure losses: (logits, labels, mask) → (mean loss over unmasked examples, aux sums).

The aux sums (not means) let callers add them up over steps, devices and ragged last batches
and divide once at the end, so a padded example never counts.
"""

import jax
import jax.numpy as jnp
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
