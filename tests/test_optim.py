"""The optax transformation built from config.opt: schedules, any optax optimizer or a user's,
weight decay and its mask, and sgd/adam/adamw exactly as before."""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import (REPO, load_config, load_config_file, read_events, tiny_mnist_config,
                      write_mnist_dir)
from jaxdl import optim, resume, tasks, train
from jaxdl.errors import UserError


def test_seed_recipe_is_plain_sgd():
  opt = load_config("mnist", "seed").opt
  tx = optim.make(opt, 100)
  params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 0.25])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.apply_updates(params, updates)["w"],
                             [1.0 - 0.01 * 0.5, -2.0 - 0.01 * 0.25])


# ---- schedules: values at chosen steps, by hand ----


def _opt(**values):
  """The MNIST config's opt block (adamw, cosine, decay_mask 'all') with `values` set."""
  opt = load_config("mnist").opt
  for key, value in values.items():
    opt[key] = value
  return opt


def _at(opt, num_steps, steps):
  lr = optim.schedule(opt, num_steps)
  return [float(lr(s)) for s in steps]


def test_cosine_schedule_warms_up_and_decays():
  opt = _opt(lr=1.0, warmup_steps=10, end_lr_factor=0.1)
  lr = optim.schedule(opt, 110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0) and float(lr(110)) == pytest.approx(0.1)
  # Halfway through the decay: 0.1 + 0.9 * (1 + cos(pi / 2)) / 2.
  assert float(lr(60)) == pytest.approx(0.55)


def test_constant_schedule_ignores_warmup():
  assert _at(_opt(lr=0.3, schedule="constant"), 50, [0, 10, 50]) == pytest.approx([0.3] * 3)


def test_linear_schedule_warms_up_then_falls_in_a_straight_line():
  opt = _opt(schedule="linear", lr=1.0, warmup_steps=10, end_lr_factor=0.1)
  # 100 steps of decay after 10 of warmup: 1 - 0.9 * t / 100.
  assert _at(opt, 110, [0, 5, 10, 35, 60, 110, 200]) == pytest.approx(
      [0.0, 0.5, 1.0, 0.775, 0.55, 0.1, 0.1])


@pytest.mark.parametrize("shape, quarter", [
    ("linear", 1 - 0.9 * 0.25),                          # 0.775
    ("cosine", 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2),  # 0.868198
    ("1-sqrt", 1 - 0.9 * math.sqrt(0.25)),               # 0.55
])
def test_wsd_schedule_holds_then_cools_down_over_the_last_fraction(shape, quarter):
  """100 steps, 10 of warmup, the last 20% (20 steps, from step 80) decaying to 0.1."""
  opt = _opt(schedule="wsd", lr=1.0, warmup_steps=10, end_lr_factor=0.1,
             cooldown_fraction=0.2, cooldown_shape=shape)
  assert _at(opt, 100, [0, 5, 10, 50, 80, 85, 100, 120]) == pytest.approx(
      [0.0, 0.5, 1.0, 1.0, 1.0, quarter, 0.1, 0.1], abs=1e-6)


def test_wsd_without_a_cooldown_keeps_lr_for_every_update():
  opt = _opt(schedule="wsd", lr=1.0, warmup_steps=0, cooldown_fraction=0.0)
  assert _at(opt, 50, [0, 25, 49]) == pytest.approx([1.0, 1.0, 1.0])


def test_rsqrt_schedule_decays_as_the_inverse_square_root_after_warmup():
  opt = _opt(schedule="rsqrt", lr=1.0, warmup_steps=4)
  # lr * sqrt(4 / step) from step 4: 1, 0.5 at 16, 0.2 at 100; no end.
  assert _at(opt, 10, [0, 2, 4, 16, 100]) == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.2])


def test_rsqrt_needs_a_warmup():
  with pytest.raises(UserError, match=r"config.opt.warmup_steps=0: must be >= 1 for "
                                      r"opt.schedule='rsqrt'"):
    optim.check(_opt(schedule="rsqrt", warmup_steps=0))


# ---- sgd, adam, adamw: the same transformation as before any optax optimizer ----


def _old_make(opt, num_train_steps):
  """jaxdl/optim.py's make() as it was before opt.name took any optax optimizer, written out."""
  if opt.schedule == "constant":
    lr = optax.constant_schedule(opt.lr)
  else:
    lr = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt.lr, warmup_steps=opt.warmup_steps,
        decay_steps=max(num_train_steps, opt.warmup_steps + 1),
        end_value=opt.lr * opt.end_lr_factor)
  mask = None if opt.decay_mask == "all" else (
      lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
  if opt.name == "sgd":
    tx = optax.sgd(lr, momentum=opt.momentum or None, nesterov=opt.nesterov)
    if opt.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask), tx)
  elif opt.name == "adam":
    tx = optax.adam(lr, b1=opt.b1, b2=opt.b2)
  else:
    tx = optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=mask)
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx


PARAMS = {"conv": {"kernel": jnp.linspace(-1, 1, 36).reshape(3, 3, 1, 4),
                   "bias": jnp.array([0.5, -0.5, 0.25, 1.0])},
          "norm": {"scale": jnp.ones((2, 4))},  # a scanned LayerNorm's: 2 dims
          "dense": {"kernel": jnp.linspace(-2, 2, 40).reshape(4, 10), "bias": jnp.zeros(10)}}


def _three_steps(tx):
  """Params, optimizer state and each step's updates after three updates of PARAMS by fixed
  gradients."""
  params, state, updates = PARAMS, tx.init(PARAMS), []
  for i in range(3):
    grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1.0)) + 0.1 * i, params)
    update, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, update)
    updates.append(update)
  return params, state, updates


@pytest.mark.parametrize("values", [
    {},                                                    # mnist: adamw, cosine, mask all
    {"decay_mask": "matrices", "grad_clip_norm": 1.0},     # tiny_lm's adamw
    {"name": "adam", "schedule": "constant", "b2": 0.99},  # adam ignores weight_decay
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 3e-6,
     "grad_clip_norm": 1.0},                               # the text classifier's
    {"name": "sgd", "schedule": "constant", "weight_decay": 0.0},  # mnist:seed
    {"name": "sgd", "momentum": 0.5, "decay_mask": "matrices", "end_lr_factor": 0.1},
])
def test_old_optimizers_build_the_same_program_and_numbers(values):
  """The same program (jaxpr and constants of init and three updates) as the old construction,
  so the same training bit for bit; and the same numbers, computed."""
  opt = _opt(**values)
  new, old = optim.make(opt, 20), _old_make(opt, 20)
  new_jaxpr, old_jaxpr = (jax.make_jaxpr(lambda tx=tx: _three_steps(tx))() for tx in (new, old))
  assert str(new_jaxpr.jaxpr) == str(old_jaxpr.jaxpr)
  assert len(new_jaxpr.consts) == len(old_jaxpr.consts)
  for a, b in zip(new_jaxpr.consts, old_jaxpr.consts):
    np.testing.assert_array_equal(a, b)
  got, want = _three_steps(new), _three_steps(old)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_old_schedules_give_the_same_values(schedule):
  opt = _opt(schedule=schedule, lr=3e-3, warmup_steps=7, end_lr_factor=0.1)
  steps = jnp.arange(60)
  old = (optax.constant_schedule(opt.lr) if schedule == "constant" else
         optax.warmup_cosine_decay_schedule(0.0, opt.lr, 7, 50, opt.lr * 0.1))
  np.testing.assert_array_equal(optim.schedule(opt, 50)(steps), old(steps))


# ---- any optax optimizer, its keywords, and a user's ----


def _one_line(error):
  assert "\n" not in str(error.value), str(error.value)
  return str(error.value)


def test_every_optax_optimizer_listed_passes_check():
  """Each name OPTIMIZERS lists builds and takes one update (check's own probe); contrib's
  muon is among them."""
  assert {"sgd", "adam", "adamw", "lion", "lamb", "adafactor", "contrib.muon"} <= set(
      optim.OPTIMIZERS)
  for name in optim.OPTIMIZERS:
    if name == "noisy_sgd":  # warns that it wants a key (optax 0.2.8), and works
      continue
    optim.check(_opt(name=name, decay_mask="all"))


def test_an_unknown_optimizer_is_one_line_listing_the_names():
  with pytest.raises(UserError) as e:
    optim.check(_opt(name="lamb2"))
  assert _one_line(e).startswith("config.opt.name='lamb2': not an optimizer of optax ")
  assert "adamw, adan" in str(e.value) and "contrib.muon" in str(e.value)
  assert "PACKAGE.MODULE:ATTR" in str(e.value)


def test_an_optimizer_the_train_step_cannot_drive_is_refused_saying_why():
  with pytest.raises(UserError) as e:
    optim.check(_opt(name="lbfgs"))
  assert _one_line(e) == ("config.opt.name='lbfgs': not supported by jaxdl's train step: its "
                          "update needs the loss and the loss function (value, grad, value_fn)")


def test_unknown_keywords_are_one_line_naming_them_and_the_valid_ones():
  with pytest.raises(UserError) as e:
    optim.check(_opt(name="lion", kwargs={"beta1": 0.9, "eps": 1e-8}))
  # weight_decay and mask are jaxdl's (opt.weight_decay, opt.decay_mask): not listed.
  assert _one_line(e) == ("config.opt.kwargs: beta1, eps: not keywords of optax.lion, which "
                          "takes b1, b2, mu_dtype")


@pytest.mark.parametrize("name, key, owner", [
    ("adamw", "b2", "opt.b2"), ("sgd", "momentum", "opt.momentum"),
    ("lion", "weight_decay", "opt.weight_decay"), ("lamb", "mask", "opt.decay_mask"),
    ("lion", "learning_rate", "opt.lr and opt.schedule")])
def test_a_keyword_jaxdl_sets_is_refused_in_kwargs(name, key, owner):
  with pytest.raises(UserError) as e:
    optim.check(_opt(name=name, kwargs={key: 0.5}))
  assert _one_line(e) == f"config.opt.kwargs: {key!r} is set by config.{owner}, not here"


def test_a_keyword_value_optax_rejects_is_one_line_before_the_run():
  with pytest.raises(UserError) as e:
    optim.check(_opt(name="adam", kwargs={"eps": "small"}))
  assert _one_line(e).startswith("config.opt.name='adam': optax.adam(learning_rate=<schedule>, "
                                 "...) failed, built and given one update of a tiny tree")


def test_kwargs_reach_the_optimizer_and_the_shared_keys_do_not():
  """lion gets opt.kwargs' b1, optax's own b2 (0.99, not the adam-tuned opt.b2), and
  opt.weight_decay with the mask."""
  opt = _opt(name="lion", kwargs={"b1": 0.8}, b2=0.5, schedule="constant", lr=0.01,
             weight_decay=0.1, decay_mask="no_bias_norm")
  want = optax.lion(optax.constant_schedule(0.01), b1=0.8, weight_decay=0.1,
                    mask=optim.decay_mask(opt))
  for a, b in zip(jax.tree.leaves(_three_steps(optim.make(opt, 10))),
                  jax.tree.leaves(_three_steps(want))):
    np.testing.assert_array_equal(a, b)


def test_a_user_optimizer_is_called_like_optax_with_kwargs():
  opt = _opt(name="small_models:nesterov_sgd", kwargs={"momentum": 0.5}, weight_decay=0.0,
             schedule="constant", lr=0.1)
  optim.check(opt)
  want = optax.sgd(optax.constant_schedule(0.1), momentum=0.5, nesterov=True)
  for a, b in zip(jax.tree.leaves(_three_steps(optim.make(opt, 10))),
                  jax.tree.leaves(_three_steps(want))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, kwargs, message", [
    ("small_models:nowhere", {}, "'small_models' has no function 'nowhere'"),
    ("no_such_module_xyz:f", {}, "cannot import 'no_such_module_xyz' (ModuleNotFoundError"),
    ("small_models:", {}, "expected PACKAGE.MODULE:ATTR"),
    ("small_models:nesterov_sgd", {"eps": 1.0},
     None),  # below: an unknown keyword of a user's factory
    ("small_models:small_cnn", {}, "small_cnn(learning_rate=<schedule>, ...) failed"),
])
def test_a_bad_user_optimizer_is_one_line(name, kwargs, message):
  with pytest.raises(UserError) as e:
    optim.check(_opt(name=name, kwargs=kwargs))
  line = _one_line(e)
  if message is None:
    assert line == ("config.opt.kwargs: eps: not keywords of nesterov_sgd, which takes momentum")
  else:
    assert line.startswith(f"config.opt.name={name!r}: ") and message in line, line


def test_kwargs_from_the_command_line_replace_the_whole_dict():
  """config_flags parses --config.opt.kwargs as a Python dict (on the locked config); a single
  keyword (--config.opt.kwargs.b2) is an unknown key, which jaxdl.main reports in one line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  def parse(*args):
    argv = ["jaxdl", f"--config={REPO}/configs/mnist.py", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
    with warnings.catch_warnings():  # config_flags loads the file with load_module (3.12)
      warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
      values(argv)
    return values.config

  config = parse("--config.opt.name=lion", "--config.opt.kwargs={'b2': 0.98, 'b1': 0.95}")
  assert config.opt.kwargs.to_dict() == {"b1": 0.95, "b2": 0.98}
  optim.check(config.opt)
  with pytest.raises((AttributeError, KeyError)):
    parse("--config.opt.kwargs.b2=0.98")


# ---- weight decay ----


def test_no_bias_norm_spares_biases_and_norm_scales_whatever_their_dims():
  opt = _opt(decay_mask="no_bias_norm")
  assert optim.decay_mask(opt)(PARAMS) == {
      "conv": {"kernel": True, "bias": False}, "norm": {"scale": False},
      "dense": {"kernel": True, "bias": False}}
  assert optim.decay_mask(_opt(decay_mask="matrices"))(PARAMS)["norm"] == {"scale": True}


def _decayed(opt):
  """Each param's update under zero gradients: the weight decay alone."""
  tx = optim.make(opt, 10)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  return tx.update(zeros, tx.init(PARAMS), PARAMS)[0]


def test_an_optimizer_with_a_masked_decay_of_its_own_gets_it():
  """lion: -lr * wd * p where the mask says, 0 elsewhere."""
  update = _decayed(_opt(name="lion", schedule="constant", lr=0.5, weight_decay=0.1,
                           decay_mask="no_bias_norm"))
  np.testing.assert_allclose(update["dense"]["kernel"], -0.05 * PARAMS["dense"]["kernel"],
                             rtol=1e-6)
  assert not np.any(update["dense"]["bias"]) and not np.any(update["norm"]["scale"])


def test_an_optimizer_without_a_decay_gets_coupled_l2_and_adam_none():
  """rmsprop: the decay added to the gradient (biases spared); adam: as always, no decay."""
  update = _decayed(_opt(name="rmsprop", schedule="constant", weight_decay=0.1,
                           decay_mask="no_bias_norm"))
  assert np.all(update["dense"]["kernel"][PARAMS["dense"]["kernel"] != 0] != 0)
  assert not np.any(update["conv"]["bias"])
  update = _decayed(_opt(name="adam", schedule="constant", weight_decay=0.1))
  assert not any(np.any(u) for u in jax.tree.leaves(update))


def test_a_decay_without_a_mask_needs_decay_mask_all():
  with pytest.raises(UserError) as e:
    optim.check(_opt(name="novograd", weight_decay=0.1, decay_mask="no_bias_norm"))
  assert _one_line(e) == ("config.opt.decay_mask='no_bias_norm': novograd's weight_decay takes "
                          "no mask: set opt.decay_mask='all' (or opt.weight_decay=0)")
  optim.check(_opt(name="novograd", weight_decay=0.1, decay_mask="all"))
  optim.check(_opt(name="novograd", weight_decay=0.0, decay_mask="no_bias_norm"))


@pytest.mark.parametrize("config_file, mask", [
    ("configs/mnist.py", "all"), ("configs/mnist.py:seed", "all"),
    ("configs/text_classifier.py", "all"), ("configs/tiny_lm.py", "matrices"),
    ("configs/tiny_lm.py:gpt2_small", "matrices"), ("experiments/custom/denoise_mnist.py", "all"),
    ("experiments/custom/diabetes.py", "all"), ("experiments/custom/resnet_mnist.py", "all")])
def test_the_shipped_presets_keep_the_mask_they_were_measured_with(config_file, mask):
  """no_bias_norm became the default after they were measured: each names its own."""
  path, _, preset = config_file.partition(":")
  assert load_config_file(f"{REPO}/{path}", preset or None).opt.decay_mask == mask


# ---- training, the lr readout and resuming ----


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  """Small MNIST-format IDX files of easy 'digits' (a bright square per class)."""
  path = str(tmp_path_factory.mktemp("digits"))
  write_mnist_dir(path, n_train=96, n_test=32, learnable=True)
  return path


def _digits_config(digits, model, **opt):
  config = tiny_mnist_config()
  config.model.name = model
  config.data.source, config.data.path = "files", digits
  for key, value in opt.items():
    config.opt[key] = value
  return config


def _losses(workdir):
  return [e["loss"] for e in read_events(workdir) if e["event"] == "train"]


def test_lion_with_wsd_trains_a_small_cnn(digits, tmp_path):
  config = _digits_config(digits, "small_models:small_cnn", name="lion", schedule="wsd",
                          lr=3e-3, weight_decay=0.1)
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(config, workdir)
  losses = _losses(workdir)
  assert losses[-1] < 0.7 * losses[0], losses
  # The logged lr is the schedule's at the step's last update.
  lr = optim.schedule(config.opt, config.num_train_steps)
  logged = [(e["step"], e["lr"]) for e in read_events(workdir) if e["event"] == "train"]
  assert logged == [(step, pytest.approx(float(lr(step - 1)))) for step, _ in logged]


def test_a_user_optimizer_by_import_path_trains(digits, tmp_path):
  config = _digits_config(digits, "small_models:mlp", name="small_models:nesterov_sgd",
                          kwargs={"momentum": 0.8}, lr=0.05)
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(config, workdir)
  losses = _losses(workdir)
  assert losses[-1] < 0.7 * losses[0], losses


def test_applied_updates_counts_any_optimizer_with_a_schedule():
  for opt in (_opt(name="lion", schedule="wsd"), _opt(name="contrib.muon", decay_mask="all")):
    _, state, _ = _three_steps(optim.make(opt, 10))
    assert optim.applied_updates(state) == 3
  assert optim.applied_updates(_three_steps(optim.make(_opt(schedule="constant"), 10))[1]) == 3
  assert optim.applied_updates(_three_steps(optax.sgd(0.1))[1]) is None  # a float lr


def test_a_config_json_from_before_the_new_keys_resumes_as_it_was():
  """An old run's config.json lacks opt.kwargs, cooldown_fraction and cooldown_shape: nothing
  to adopt or refuse; a keyword given now is another experiment."""
  config = load_config("mnist")
  saved = json.loads(json.dumps(config.to_dict()))  # as read back
  for key in ("kwargs", "cooldown_fraction", "cooldown_shape"):
    del saved["opt"][key]
  keys = resume.declared(tasks.get(config.task), config.model)
  assert resume.adopt_added_keys(config, saved, keys) == {}
  assert resume.check_resume_config("w", saved, config.to_dict(), keys) == {}
  config.opt.kwargs = {"eps": 1e-6}
  with pytest.raises(UserError, match=r"opt.kwargs.eps: None -> 1e-06"):
    resume.check_resume_config("w", saved, config.to_dict(), keys)
