"""jaxdl/resume.py: the config guard between a workdir's config.json and today's config.

(tests/test_faults.py has the first cases of added keys; these test the rest of the contract:
saved_config's three outcomes, harmless changes coming back, refusals' wording, adoption.)
"""

import copy
import importlib.util
import json
import sys
import types

import ml_collections
import pytest

from conftest import REPO, flat_keys, load_config, load_config_file, set_keys
from jaxdl import models, resume, tasks, validate
from jaxdl.errors import UserError

SHIPPED = [("mnist", None), ("mnist", "seed"), ("text_classifier", None), ("tiny_lm", None),
           ("tiny_lm", "nanogpt_cpu"), ("tiny_lm", "gpt2_small")]


def _keys(config) -> resume.Keys:
  """The keys that config's rooms (its task, its model's) and the shared blocks declare."""
  return resume.declared(tasks.get(config.task), config.model)


def _workdir(tmp_path, config: dict | None = None, checkpoints: bool = True) -> str:
  """A workdir as a run leaves it: config.json (if given) and a checkpoint step directory."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  if checkpoints:
    (workdir / "checkpoints" / "8").mkdir(parents=True)
  if config is not None:
    (workdir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
  return str(workdir)


# ---- saved_config ----


def test_saved_config_is_the_config_json_of_a_workdir_with_checkpoints(tmp_path):
  saved = load_config("mnist").to_dict()
  workdir = _workdir(tmp_path, saved)
  assert resume.saved_config(workdir) == json.loads(json.dumps(saved))  # tuples come back lists


def test_a_workdir_without_checkpoints_has_no_saved_config(tmp_path):
  """A run killed before its first checkpoint starts afresh: its config.json is not a guard."""
  assert resume.saved_config(_workdir(tmp_path, {"seed": 0}, checkpoints=False)) is None


def test_a_workdir_with_checkpoints_but_no_config_json_has_none(tmp_path):
  assert resume.saved_config(_workdir(tmp_path, None)) is None


def test_a_checkpoints_folder_without_a_step_is_not_a_run_to_resume(tmp_path):
  """Only digit-named step directories count (an Orbax temporary one does not)."""
  workdir = tmp_path / "w"
  (workdir / "checkpoints" / "8.orbax-checkpoint-tmp-1").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"seed": 0}))
  assert resume.saved_config(str(workdir)) is None


def test_an_unreadable_config_json_is_one_user_error_naming_the_file(tmp_path):
  workdir = _workdir(tmp_path)
  (tmp_path / "w" / "config.json").write_text('{"seed": 0,')  # cut short, as by a full disk
  with pytest.raises(UserError) as error:
    resume.saved_config(workdir)
  message = str(error.value)
  assert message.startswith(f"{workdir}/config.json: unreadable (")  # json's reason follows
  assert message.endswith("); use a new --workdir") and "\n" not in message


# ---- check_resume_config ----


@pytest.mark.parametrize("name, preset", SHIPPED)
def test_a_shipped_config_resumes_under_itself_through_config_json(tmp_path, name, preset):
  """Written as JSON (tuples become lists) and read back, a config differs from itself in
  nothing."""
  config = load_config(name, preset)
  workdir = _workdir(tmp_path, config.to_dict())
  saved = resume.saved_config(workdir)
  assert resume.check_resume_config(workdir, saved, config.to_dict(), _keys(config)) == {}


def test_harmless_changes_come_back_as_old_and_new(tmp_path):
  """Run length, cadence, layout and rounding keys may change; each comes back (old, new)."""
  config = load_config("tiny_lm")
  workdir = _workdir(tmp_path, config.to_dict())
  saved = resume.saved_config(workdir)
  set_keys(config, {"num_train_steps": 2_000, "log_every": 10, "parallel.mesh_shape": (2, 1),
                    "model.remat": "block", "train.grad_accum_steps": 2, "profile_steps": "3:5"})
  assert resume.check_resume_config(workdir, saved, config.to_dict(), _keys(config)) == {
      "num_train_steps": (1_150, 2_000), "log_every": (100, 10),
      "parallel.mesh_shape": ([-1], [2, 1]), "model.remat": ("none", "block"),
      "train.grad_accum_steps": (1, 2), "profile_steps": ("", "3:5")}


@pytest.mark.parametrize("key, value, shown", [
    ("seed", 1, "seed: 0 -> 1"),
    ("opt.lr", 0.01, "opt.lr: 0.002 -> 0.01"),
    ("data.name", "fashion_mnist", "data.name: 'mnist' -> 'fashion_mnist'"),
    ("model.param_dtype", "bfloat16", "model.param_dtype: 'float32' -> 'bfloat16'"),
    ("train.ema_decay", 0.99, "train.ema_decay: 0.0 -> 0.99"),
])
def test_a_changed_key_that_is_not_harmless_is_refused_naming_old_and_new(tmp_path, key, value,
                                                                          shown):
  config = load_config("mnist")
  workdir = _workdir(tmp_path, config.to_dict())
  saved = resume.saved_config(workdir)
  set_keys(config, {key: value})
  with pytest.raises(UserError) as error:
    resume.check_resume_config(workdir, saved, config.to_dict(), _keys(config))
  assert str(error.value).startswith(
      f"--workdir={workdir} holds checkpoints of another experiment; these keys differ from its "
      f"config.json: {shown}. Use a new --workdir or --restart (only num_train_steps, num_epochs, ")


def test_a_refusal_lists_every_refused_key_in_order_and_no_harmless_one(tmp_path):
  """Several differences: the refused keys in sorted order, ';'-separated; a harmless change
  made at the same time is not among them; the list of what may change ends the line."""
  config = load_config("mnist")
  workdir = _workdir(tmp_path, config.to_dict())
  saved = resume.saved_config(workdir)
  set_keys(config, {"seed": 3, "batch_size": 32, "num_train_steps": 99, "opt.name": "sgd"})
  with pytest.raises(UserError) as error:
    resume.check_resume_config(workdir, saved, config.to_dict(), _keys(config))
  message = str(error.value)
  listed = message.split("config.json: ")[1].split(". Use a new --workdir")[0]
  assert listed == "batch_size: 64 -> 32; opt.name: 'adamw' -> 'sgd'; seed: 0 -> 3"
  assert message.endswith(f"(only {', '.join(_keys(config).harmless)} may change on resume)")
  assert "\n" not in message


def test_a_key_the_saved_run_had_but_this_config_lacks_is_refused_unless_it_meant_the_default(
    tmp_path):
  """loss.label_smoothing left the language model's config; a config.json with 0.0 (which
  its runs never read) resumes, one with another value (another experiment) does not."""
  config = load_config("tiny_lm")
  assert "loss" not in config
  old = {**config.to_dict(), "loss": {"label_smoothing": 0.0}}
  workdir = _workdir(tmp_path, old)
  assert resume.check_resume_config(workdir, resume.saved_config(workdir), config.to_dict(),
                                    _keys(config)) == {}
  old["loss"]["label_smoothing"] = 0.1
  with pytest.raises(UserError, match=r"config.json: loss.label_smoothing: 0.1 -> None\. Use"):
    resume.check_resume_config(workdir, old, config.to_dict(), _keys(config))


def test_no_saved_config_has_nothing_to_check():
  """A fresh workdir (saved None) accepts any config, even one that differs everywhere."""
  assert resume.check_resume_config("/nonexistent", None, {"seed": 99},
                                    _keys(load_config("mnist"))) == {}


# ---- adopt_added_keys ----


def _without(config: dict, keys) -> dict:
  """A copy of a config dict without the dotted keys (a config.json from before they existed)."""
  old = copy.deepcopy(config)
  for key in keys:
    *parents, name = key.split(".")
    node = old
    for part in parents:
      node = node.get(part, {})
    node.pop(name, None)
  return old


def test_a_saved_config_from_before_a_key_adopts_the_old_value(tmp_path):
  """The text classifier's saved run lacks data.prefix_backoff and train.ema_warmup: today's
  values (4, True) are replaced by what the old run did (0, False), and reported."""
  config = load_config("text_classifier")
  workdir = _workdir(tmp_path, _without(config.to_dict(),
                                        ["data.prefix_backoff", "train.ema_warmup"]))
  saved = resume.saved_config(workdir)
  assert resume.adopt_added_keys(config, saved, _keys(config)) == {
      "data.prefix_backoff": (4, 0), "train.ema_warmup": (True, False)}
  assert config.data.prefix_backoff == 0 and config.train.ema_warmup is False
  assert resume.check_resume_config(workdir, saved, config.to_dict(), _keys(config)) == {}


def test_a_missing_key_already_at_the_old_value_is_not_reported(tmp_path):
  """grad_accum_steps is 1 in today's config too: nothing to adopt, nothing said."""
  config = load_config("mnist")
  saved = _without(config.to_dict(), ["train.grad_accum_steps"])
  assert resume.adopt_added_keys(config, saved, _keys(config)) == {}
  assert config.train.grad_accum_steps == 1


def test_a_saved_config_without_a_whole_section_adopts_its_added_keys():
  """A run from before the train block existed: each added train key takes its old value."""
  config = load_config("mnist")
  saved = _without(config.to_dict(), [])
  del saved["train"]
  assert resume.adopt_added_keys(config, saved, _keys(config)) == {
      "train.ema_warmup": (True, False)}


def test_a_key_this_config_does_not_have_is_not_added():
  """data.prefix_backoff is a text key: an MNIST config is not given one."""
  config = load_config("mnist")
  assert "prefix_backoff" not in config.data
  resume.adopt_added_keys(config, {"seed": 0}, _keys(config))
  assert "prefix_backoff" not in config.data


def test_a_fresh_workdir_adopts_nothing(tmp_path):
  """No checkpoints: saved_config is None, and the config is left exactly as given."""
  config = load_config("text_classifier")
  before = config.to_dict()
  saved = resume.saved_config(_workdir(tmp_path, {"seed": 0}, checkpoints=False))
  assert saved is None
  assert resume.adopt_added_keys(config, saved, _keys(config)) == {}
  assert config.to_dict() == before


@pytest.mark.parametrize("name, preset", SHIPPED)
def test_a_run_from_before_every_added_key_resumes_and_still_validates(tmp_path, name, preset):
  """Each shipped config, resumed from a config.json lacking every key its rooms declare
  added, takes values its locked ConfigDict accepts (types included), which then pass validate
  and make the resume check clean."""
  config = load_config(name, preset)
  added = _keys(config).added
  saved = json.loads(json.dumps(_without(config.to_dict(), added)))  # as read
  adopted = resume.adopt_added_keys(config, saved, _keys(config))
  assert set(adopted) <= set(added)
  assert all(new == added[k] for k, (_, new) in adopted.items())
  validate.validate(config, tasks.get(config.task), str(tmp_path / "w"))
  assert resume.check_resume_config(str(tmp_path), saved, config.to_dict(), _keys(config)) == {}


# Keys a room declares that its configs no longer have: a config.json holding one at the
# declared value resumes. loss.label_smoothing left the language model's config (never read).
REMOVED = {"jaxdl.tasks.language_model": {"loss.label_smoothing"}}
# experiments/custom's configs
CUSTOM = ("denoise_mnist", "resnet_mnist", "cnn_nnx_mnist", "diabetes")


def test_every_declared_key_is_a_key_of_a_shipped_config_of_its_room(monkeypatch):
  """Each room's RESUME_HARMLESS and RESUME_ADDED name keys of the shipped configs that use
  that room (a task, a model family, precision.py, experiments/custom's modules), and
  resume.py's own only keys of the shared blocks: a misspelt or misplaced entry would never
  match, silently refusing (or not adopting) the real key."""
  monkeypatch.syspath_prepend(REPO)  # experiments.custom's modules, as their configs name them
  configs = [load_config(n, p) for n, p in SHIPPED] + [
      load_config_file(f"{REPO}/experiments/custom/{name}.py") for name in CUSTOM]
  keys_of = {}  # {room module: the keys of the configs that use it}
  for config in configs:
    for room in (tasks.get(config.task), *models.rooms(config.model)):
      keys_of.setdefault(room, set()).update(flat_keys(config.to_dict()))
  assert set(tasks.TASKS.values()) | set(models.FAMILIES.values()) <= set(keys_of)
  for room, keys in keys_of.items():
    known = keys | REMOVED.get(room.__name__, set())
    declared = [*getattr(room, "RESUME_HARMLESS", ()), *getattr(room, "RESUME_ADDED", {})]
    assert [k for k in declared if k not in known] == [], room.__name__
  spec = importlib.util.spec_from_file_location("common", f"{REPO}/configs/common.py")
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)  # this checkout's, as load_config reads its configs
  shared = flat_keys(common.get_config().to_dict())
  assert [k for k in (*resume.HARMLESS, *resume.ADDED) if k not in shared] == []


def test_adopting_into_a_locked_config_keeps_it_locked():
  config = load_config("tiny_lm")
  resume.adopt_added_keys(config, {"model": {"name": "transformer"}}, _keys(config))
  assert config.model.scan_layers is False and config.model.attention == "xla"
  with pytest.raises(AttributeError):
    config.model.no_such_key = 1


# ---- declared: what each room declares ----


USER_MODEL = """
import flax.linen as nn

RESUME_HARMLESS = ("model.chunk",)  # rows per forward pass: memory and speed, not the result

def build(model_config, *, num_classes):
  return nn.Dense(num_classes)
"""


def _user_model_config(tmp_path, monkeypatch, source: str):
  """The MNIST config with a user's model block, its module (source) importable."""
  (tmp_path / "resume_model.py").write_text(source)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "resume_model", raising=False)  # another test's copy
  config = load_config("mnist")
  config.unlock()
  config.model = ml_collections.ConfigDict(dict(name="resume_model:build", chunk=64, width=8))
  config.lock()
  return config


def test_a_user_models_harmless_key_may_change_on_resume(tmp_path, monkeypatch):
  """The model module named by model.name declares its own harmless keys: model.chunk may
  change; model.width, which it does not declare, is refused."""
  config = _user_model_config(tmp_path, monkeypatch, USER_MODEL)
  workdir = _workdir(tmp_path, config.to_dict())
  saved = resume.saved_config(workdir)
  config.model.chunk = 128
  keys = _keys(config)
  assert keys.harmless[-1] == "model.chunk"  # after the shared keys and the task's
  assert resume.check_resume_config(workdir, saved, config.to_dict(), keys) == {
      "model.chunk": (64, 128)}
  config.model.width = 16
  with pytest.raises(UserError, match=r"config.json: model.width: 8 -> 16\. Use a new .*, "
                                      r"data.download_dir, data.streaming, data.memory_budget_gb, "
                                      r"data.workers, data.prefetch, model.chunk may change on "
                                      r"resume\)$"):
    resume.check_resume_config(workdir, saved, config.to_dict(), keys)


@pytest.mark.parametrize("declaration, shape", [
    ("RESUME_HARMLESS = 'model.chunk'", "RESUME_HARMLESS must be a tuple of dotted config keys"),
    ("RESUME_HARMLESS = ('model.chunk', 3)", "RESUME_HARMLESS must be a tuple of dotted"),
    ("RESUME_ADDED = ['model.chunk']", "RESUME_ADDED must be a dict {dotted config key: the "),
    ("RESUME_ADDED = {1: 0}", "RESUME_ADDED must be a dict"),
])
def test_a_malformed_declaration_is_one_line_naming_the_module(tmp_path, monkeypatch,
                                                                declaration, shape):
  config = _user_model_config(tmp_path, monkeypatch, f"{USER_MODEL}\n{declaration}\n")
  with pytest.raises(UserError) as error:
    _keys(config)
  message = str(error.value)
  assert message.startswith(f"resume_model ({tmp_path / 'resume_model.py'}): {shape}")
  assert "\n" not in message


def test_two_rooms_that_give_an_added_key_different_values_are_one_line():
  """The value that reproduces older runs is one value: a task that contradicts the shared
  blocks' (or a model's) is refused, naming both."""
  task = types.ModuleType("mytask")
  task.RESUME_ADDED = {"train.ema_decay": 0.5}
  with pytest.raises(UserError, match=r"^RESUME_ADDED\['train.ema_decay'\]: jaxdl.resume "
                                      r"declares 0.0, mytask 0.5; one value"):
    resume.declared(task, ml_collections.ConfigDict({"name": "cnn"}))
