"""The precision policy every model family shares: config.model.dtype and model.param_dtype.

`dtype` is the compute dtype of the matmuls and convolutions (activations between them follow
it); `param_dtype` is the params' storage dtype, and with it the optimizer state's. Logits,
softmax, losses and metric sums are float32 whatever the policy: each family casts its output
to float32, and losses.py computes in float32. 'auto' computes in bfloat16 on GPU and TPU,
whose matrix units run it at 2-16x float32's rate, and in float32 on CPU, where bfloat16 is
emulated and slower.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdl.errors import require

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
COMPUTE_DTYPES = (*DTYPES, "auto")  # config.model.dtype

# Resume declarations (jaxdl/resume.py), merged for every built-in family: the compute dtype
# changes only rounding (the params keep param_dtype); runs made before either key computed
# and stored in float32.
RESUME_HARMLESS = ("model.dtype",)
RESUME_ADDED = {"model.dtype": "float32", "model.param_dtype": "float32"}


def compute_dtype(name: str) -> jnp.dtype:
  """config.model.dtype as a dtype: 'auto' is bfloat16 on GPU and TPU, float32 elsewhere."""
  if name == "auto":
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  return DTYPES[name]


def check(m) -> None:
  """config.model.dtype and model.param_dtype (a user's model block may lack them)."""
  if "dtype" in m:
    require(m.dtype in COMPUTE_DTYPES, "model.dtype", m.dtype,
            f"must be one of {', '.join(COMPUTE_DTYPES)}")
  if "param_dtype" in m:
    require(m.param_dtype in DTYPES, "model.param_dtype", m.param_dtype,
            f"must be one of {', '.join(DTYPES)}")
