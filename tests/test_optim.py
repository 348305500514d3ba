"""The optax transformation built from config.opt."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config
from jaxdl import optim
from jaxdl.errors import UserError


def test_seed_recipe_is_plain_sgd():
  opt = load_config("mnist", "seed").opt
  tx = optim.make(opt, 100)
  params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 0.25])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.apply_updates(params, updates)["w"],
                             [1.0 - 0.01 * 0.5, -2.0 - 0.01 * 0.25])


def test_cosine_schedule_warms_up_and_decays():
  opt = load_config("mnist").opt
  opt.lr, opt.warmup_steps, opt.end_lr_factor = 1.0, 10, 0.1
  lr = optim.schedule(opt, 110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0) and float(lr(110)) == pytest.approx(0.1)


def test_unknown_optimizer_names_the_key():
  opt = load_config("mnist").opt
  opt.name = "lamb"
  with pytest.raises(UserError, match="opt.name='lamb' is not one of sgd, adam, adamw"):
    optim.make(opt, 10)
