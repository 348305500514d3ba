"""On-device augmentation, inside the compiled train step, keyed by the step's rng."""

import jax
import jax.numpy as jnp


def random_shift(images_BxHxWxC: jax.Array, rng: jax.Array, max_shift: int) -> jax.Array:
  """Translates each image by up to `max_shift` pixels in each direction, filling with zeros."""
  if max_shift == 0:
    return images_BxHxWxC
  b, h, w, c = images_BxHxWxC.shape
  m = max_shift
  padded = jnp.pad(images_BxHxWxC, ((0, 0), (m, m), (m, m), (0, 0)))
  offsets_Bx2 = jax.random.randint(rng, (b, 2), 0, 2 * m + 1)
  crop = lambda image, off: jax.lax.dynamic_slice(image, (off[0], off[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets_Bx2)
