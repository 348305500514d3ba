"""train_step / eval_step: learning on a fixed batch, jit equals no-jit, donation, sums."""

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from jaxdl import steps
from jaxdl.errors import UserError
from jaxdl.data.augment import random_shift
from jaxdl.tasks import classifier
from small_models import MLP, BatchNormMLP


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
          "label": rng.integers(0, 10, (n,), dtype=np.int32),
          "mask": np.ones(n, np.float32)}


def _objective(model, max_shift):
  """The image task's objective (softmax cross-entropy, shifted training images)."""
  return functools.partial(classifier.classify, model=model, input_key="image",
                           label_smoothing=0.0,
                           augment=functools.partial(random_shift, max_shift=max_shift))


def _setup(max_shift=0, dropout=0.0, tx=optax.adam(1e-3)):
  """A step of the image task's objective on a small MLP (the steps do not depend on the model;
  the CNN's own tests are test_models.py)."""
  model = MLP(dropout=dropout)
  state = steps.create_state(model, tx, _batch()["image"], seed=0)
  objective = _objective(model, max_shift)
  step = functools.partial(steps.train_step, objective=objective, tx=tx)
  return objective, state, step


def test_train_step_lowers_loss_on_a_fixed_batch():
  _, state, step = _setup(tx=optax.adam(1e-2))
  train_step = jax.jit(step, donate_argnums=0)
  batch = _batch()
  losses = []
  for _ in range(30):
    state, m = train_step(state, batch)
    losses.append(float(m["loss_sum"] / m["count"]))
  assert losses[-1] < 0.1 * losses[0], losses
  assert int(state.step) == 30


@pytest.mark.slow
def test_jit_equals_no_jit():
  # SGD, not Adam: Adam's first step is ~lr*sign(g), which turns float noise in g ≈ 0 into lr.
  _, state, step = _setup(max_shift=2, dropout=0.25, tx=optax.sgd(0.1))
  batch = _batch()
  with jax.disable_jit():
    eager_state, eager_m = step(state, batch)
  jit_state, jit_m = jax.jit(step)(state, batch)
  np.testing.assert_allclose(eager_m["loss_sum"], jit_m["loss_sum"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(eager_state.params), jax.tree.leaves(jit_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_step_rng_comes_from_seed_and_step():
  _, state, step = _setup(max_shift=2, dropout=0.5)
  train_step = jax.jit(step)
  _, m1 = train_step(state, _batch())
  _, m2 = train_step(state, _batch())
  assert float(m1["loss_sum"]) == float(m2["loss_sum"])  # same state, same step: same draws
  _, m3 = train_step(state.replace(step=state.step + 1), _batch())
  assert float(m1["loss_sum"]) != float(m3["loss_sum"])  # another step: other draws


def test_train_step_donates_the_state():
  _, state, step = _setup()
  old_params = jax.tree.leaves(state.params)
  jax.jit(step, donate_argnums=0)(state, _batch())
  assert all(x.is_deleted() for x in old_params)


def test_masked_examples_change_nothing():
  objective, state, step = _setup()
  batch = _batch(16)
  half = {k: v[:8] for k, v in batch.items()}
  padded = dict(batch, mask=np.r_[np.ones(8), np.zeros(8)].astype(np.float32))
  padded["image"][8:] = 255  # garbage in the padding
  s1, m1 = jax.jit(step)(state, half)
  s2, m2 = jax.jit(step)(state, padded)
  assert float(m2["count"]) == 8
  np.testing.assert_allclose(m1["loss_sum"], m2["loss_sum"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  sums = steps.eval_step(state, padded, objective=objective)
  assert float(sums["count"]) == 8


def test_nonfinite_update_is_flagged_and_skipped_only_when_asked():
  _, state, step = _setup()
  bad = _batch()
  bad["mask"] = bad["mask"] * np.float32("nan")  # NaN loss and gradients
  applied, aux = jax.jit(step)(state, bad)
  assert float(aux["nonfinite"]) == 1 and float(aux["first_nonfinite"]) == 1  # update 1
  assert not np.isfinite(np.asarray(applied.params["Dense_1"]["kernel"])).all()
  skipping_step = jax.jit(functools.partial(step, skip_nonfinite=True))
  skipped, aux = skipping_step(state, bad)
  assert float(aux["nonfinite"]) == 1 and float(aux["loss_sum"]) == 0  # sums zeroed
  assert int(skipped.step) == 1  # the step (and so the data) still advances
  for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                  jax.tree.leaves((skipped.params, skipped.opt_state))):
    np.testing.assert_array_equal(a, b)
  _, aux = skipping_step(state, _batch())
  assert float(aux["nonfinite"]) == 0 and float(aux["first_nonfinite"]) == steps.NO_NONFINITE


class _Linear(nn.Module):
  """A linear classifier of the pixels: the smallest model classifier.classify accepts."""

  @nn.compact
  def __call__(self, images, train):
    return nn.Dense(10)(images.reshape(images.shape[0], -1) / 255.0)


def test_ema_warmup_follows_the_formula_at_steps_0_1_10_and_10000():
  for t in (0, 1, 10, 10_000):
    np.testing.assert_allclose(float(steps.ema_decay_at(0.999, t, True)),
                               min(0.999, (1 + t) / (10 + t)), rtol=1e-7)
  assert [round(float(steps.ema_decay_at(0.999, t, True)), 6) for t in (0, 1, 10, 10_000)] == [
      0.1, round(2 / 11, 6), 0.55, 0.999]
  assert steps.ema_decay_at(0.999, 10_000, False) == 0.999 == steps.ema_decay_at(0.999, 0, False)


@pytest.mark.slow
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_is_the_moving_average_and_what_eval_uses(warmup):
  model = _Linear()
  tx = optax.sgd(0.1)
  objective = _objective(model, 0)
  state = steps.create_state(model, tx, _batch()["image"], seed=0, ema=True)
  step = jax.jit(functools.partial(steps.train_step, objective=objective, tx=tx, ema_decay=0.9,
                                   ema_warmup=warmup))
  # By hand, in float64: e_0 = p_0, e_t = d_t e_{t-1} + (1 - d_t) p_t, d_t = 0.9 or, warming
  # up, min(0.9, t / (9 + t)) for update t = 1, 2, 3 (0.1, 2/11, 0.25).
  expected = jax.tree.map(lambda p: np.asarray(p, np.float64), state.params)
  for t in range(3):
    state, _ = step(state, _batch(seed=t))
    d = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * np.asarray(p, np.float64), expected,
                            state.params)
  for e, got in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema_params)):
    np.testing.assert_allclose(got, e, rtol=1e-5, atol=1e-7)
  assert not np.allclose(state.ema_params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
  # eval_step scores the average, not the raw params.
  evaluated = steps.eval_step(state, _batch(), objective=objective)
  _, on_ema, _ = objective({"params": state.ema_params}, _batch(), jax.random.PRNGKey(0), False)
  np.testing.assert_array_equal(evaluated["loss_sum"], on_ema["loss_sum"])
  # A skipped (non-finite) update leaves the average as it was.
  bad = dict(_batch(), mask=_batch()["mask"] * np.float32("nan"))
  skipped, _ = jax.jit(functools.partial(steps.train_step, objective=objective, tx=tx,
                                         ema_decay=0.9, ema_warmup=warmup,
                                         skip_nonfinite=True))(state, bad)
  for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(skipped.ema_params)):
    np.testing.assert_array_equal(a, b)


def test_microbatches_are_strided_rows():
  batch = {"x": np.arange(8), "y": np.arange(16).reshape(8, 2)}
  micro = steps.microbatches(batch, 4)
  np.testing.assert_array_equal(micro["x"], [[0, 4], [1, 5], [2, 6], [3, 7]])
  assert micro["y"].shape == (4, 2, 2) and list(micro["y"][1, 1]) == [10, 11]


@pytest.mark.slow
def test_gradient_accumulation_equals_the_whole_batch_with_padding_rows():
  """grad_accum_steps 1 vs 4 vs 8, 10 SGD-momentum steps of a small ReLU net, a quarter of each batch's
  rows masked (so some microbatches are mostly, or all, padding): the same losses and params
  to 1e-5 relative, and the same metric sums. (Not Adam: it divides by sqrt(v), so on the
  dead-ReLU weights whose gradient is ~0 float rounding becomes a full-size update of either
  sign; with the MNIST CNN 71 of 819,200 kernel weights differed by up to 0.4% after 10 steps.)"""
  tx = optax.sgd(0.05, momentum=0.9)
  model = MLP()
  objective = _objective(model, 0)
  state = steps.create_state(model, tx, _batch()["image"], seed=0)
  step = functools.partial(steps.train_step, objective=objective, tx=tx)
  runs = {}
  for k in (1, 4, 8):
    s, losses, sums = state, [], []
    train_step = jax.jit(functools.partial(step, grad_accum_steps=k))
    for t in range(10):
      batch = _batch(seed=t)
      batch["mask"][[1, 3, 9, 11]] = 0.0  # k=4: rows 1, 9 → microbatch 1; 3, 11 → 3; k=8: all
      s, aux = train_step(s, batch)       # of microbatches 1 and 3
      losses.append(float(aux["loss_sum"] / aux["count"]))
      sums.append((float(aux["count"]), float(aux["correct"])))
    runs[k] = (losses, sums, s.params)
  for k in (4, 8):
    np.testing.assert_allclose(runs[k][0], runs[1][0], rtol=1e-5)
    assert runs[k][1] == runs[1][1]
    assert all(c == 12.0 for c, _ in runs[k][1])
    for a, b in zip(jax.tree.leaves(runs[k][2]), jax.tree.leaves(runs[1][2])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ---- model state (BatchNorm) ----


def _bn_setup(k=1, axis_name=None):
  tx = optax.sgd(0.1)
  model = BatchNormMLP()
  objective = _objective(model, 0)
  state = steps.create_state(model, tx, _batch()["image"], seed=0)
  step = functools.partial(steps.train_step, objective=objective, tx=tx, grad_accum_steps=k,
                           axis_name=axis_name)
  return model, objective, state, step


def _hidden_BxH(model, state, images):
  """The BatchNorm layer's input: the hidden Dense's outputs, in float64 for the references."""
  dense = state.params["Dense_0"]
  x = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
  return x @ np.asarray(dense["kernel"], np.float64)


def test_batchnorm_statistics_are_the_model_state_updated_by_train_and_read_by_eval():
  """The state holds 'batch_stats' beside the params; a train step moves the running mean by
  momentum 0.9 towards the batch's mean; eval reads it (its logits use the running averages)
  and changes nothing; a skipped non-finite update keeps the old statistics."""
  model, objective, state, step = _bn_setup()
  assert set(state.model_state) == {"batch_stats"} and "batch_stats" not in state.params
  batch = _batch()
  new, _ = jax.jit(step)(state, batch)
  want = 0.9 * 0.0 + 0.1 * _hidden_BxH(model, state, batch["image"]).mean(0)
  np.testing.assert_allclose(new.model_state["batch_stats"]["BatchNorm_0"]["mean"], want,
                             rtol=1e-5, atol=1e-6)
  sums = jax.jit(functools.partial(steps.eval_step, objective=objective))(new, _batch(seed=1))
  _, by_hand, kept = objective(steps.variables(new.params, new.model_state), _batch(seed=1),
                               jax.random.PRNGKey(0), False)
  # eval_step compiled, the objective op by op: equal to rounding (1 ulp on jax 0.12)
  np.testing.assert_allclose(sums["loss_sum"], by_hand["loss_sum"], rtol=1e-6)
  # eval returns the state as it came: the same arrays
  assert all(a is b for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(new.model_state)))
  bad = dict(batch, mask=batch["mask"] * np.float32("nan"))
  skipped, _ = jax.jit(functools.partial(step, skip_nonfinite=True))(new, bad)
  for a, b in zip(jax.tree.leaves(new.model_state), jax.tree.leaves(skipped.model_state)):
    np.testing.assert_array_equal(a, b)


def test_microbatches_update_the_batchnorm_statistics_once_each_in_order():
  """grad_accum_steps=2: each (strided) microbatch is normalised by its own statistics and the
  running mean takes one update per microbatch: m = 0.9 (0.9 m0 + 0.1 mean(mb0)) + 0.1
  mean(mb1), what two smaller steps would give; not the whole batch's single update."""
  model, _, state, step = _bn_setup(k=2)
  batch = _batch()
  new, _ = jax.jit(step)(state, batch)
  hidden = _hidden_BxH(model, state, batch["image"])
  mb0, mb1 = hidden[0::2].mean(0), hidden[1::2].mean(0)  # steps.microbatches: rows i, i+k, ...
  want = 0.9 * (0.1 * mb0) + 0.1 * mb1
  got = new.model_state["batch_stats"]["BatchNorm_0"]["mean"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got, 0.1 * hidden.mean(0), rtol=1e-3)  # the one-batch update differs


def test_an_objective_of_the_old_contract_is_one_line_naming_the_new_one():
  """An objective returning (loss, sums), as before model state existed: one line."""
  _, objective, state, _ = _bn_setup()
  old = lambda *a: objective(*a)[:2]
  with pytest.raises(UserError, match=r"^the task's objective returned tuple of 2; an objective "
                                      r"returns \(loss, sums, model state\)"):
    steps.eval_step(state, _batch(), objective=old)
