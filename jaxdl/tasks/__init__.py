"""Tasks: what a run MEANS. One module per task; `get(name)` is the one place a name resolves.

A task module provides these names (the built-in ones below are the examples; a user's module
named by `--config.task=PACKAGE.MODULE` provides the same):

  INPUT          the batch key the model reads ('image'); the state is initialised with it
  UNIT           what the sums' 'count' counts ('examples', 'tokens'): train events log
                 f'{UNIT}_per_s'
  TRAIN_METRICS  summarise() keys logged with the loss in every train event (('accuracy',))
  PLOT_METRICS   jaxdl.plot's default panels (('loss', 'accuracy'))
  MODELS         built-in model families for it (model.name; 'pkg.module:attr' is any model)
  check(config)            raises UserError for a bad value of the task's own keys
  load(config, workdir)    -> data.Dataset; workdir is the run's directory when it holds
                           checkpoints to resume (reuse the files saved beside them, e.g. a
                           vocabulary), else None; it is read, never written
  objective(config, model) -> (variables, batch, rng, train) -> (loss, sums of metrics,
                           model state): the forward pass through
                           jaxdl.models.apply(model, variables, inputs, train=, rng=), which
                           returns (outputs, model state)
  summarise(sums)          -> {'loss': ..., 'count': ..., ...} from sums added over batches
  brief(split, metrics)    -> the console text of a split's metrics
Optional:
  FORMATS        {key: format} of a logged number's console text, e.g. {'accuracy': 'acc
                 {:.2%}'} (default: 'key {:.4g}', and '{:,.0f} UNIT/s' for the throughput)
  LOG_SCALE      the metrics that jaxdl.plot draws on a log axis, as it does the loss
  FILES          the names of the files load() returns in Dataset.files (('vocab.json',)):
                 jaxdl.export puts them in the weights file's metadata, so that the file
                 alone rebuilds the run (a vocabulary, class names)
  MODEL_KEYS     keys of config.model that the task reads itself (('num_classes',)): a user's
                 model need not read them, and the run does not warn that they do nothing
  RESUME_HARMLESS  a tuple of the task's dotted config keys that may change when a run
                 resumes, because they change only rounding, speed or verbosity, not what the
                 checkpoints mean: ('data.download_dir',). Any other changed key refuses it.
  RESUME_ADDED   {dotted key: value} of the task's keys added after workdirs were made without
                 them, each with the value that does what those runs did: {'data.foo': 0}. A
                 config.json that lacks the key resumes at that value, and the run says so; a
                 config.json that has a key removed from the config since resumes if it holds
                 that value. jaxdl/resume.py merges both with the shared blocks' keys and the
                 model's rooms' (jaxdl/models/__init__.py); a malformed one is a UserError.
  For the tools: predictor(config, workdir, build_model, variables) -> a function of a list of
  inputs (image paths, sentences) -> [(label, probability)] for jaxdl.predict and
  jaxdl.load's run.predict, where build_model(**model_info) builds the run's model;
  tokenizer(config, workdir) -> an object with encode(text, what) and decode(ids), for
  jaxdl.sample (a language model whose model returns logits [B, L, V]);
  model_info(config, workdir) -> the Dataset's model_info of a run made before training saved
  it as model_info.json, from the task's files (vocab.json), for jaxdl.load.
"""

from __future__ import annotations

import os
from types import ModuleType

import ml_collections

from jaxdl import files
from jaxdl.errors import UserError, first_line, import_user_module, require
from jaxdl.tasks import image_classification, language_model, text_classification

TASKS = {"image_classification": image_classification,
         "text_classification": text_classification,
         "language_model": language_model}

# The task of a config.json written before config.task existed, when jaxdl trained MNIST only.
UNNAMED = "image_classification"

REQUIRED = ("INPUT", "UNIT", "TRAIN_METRICS", "PLOT_METRICS", "MODELS", "check", "load",
            "objective", "summarise", "brief")


def get(name: str) -> ModuleType:
  """The task module of config.task: a built-in name, or a user's importable 'pkg.module'."""
  if name in TASKS:
    return TASKS[name]
  require("." in name or name.isidentifier(), "task", name,
          f"not one of {', '.join(TASKS)}, nor a module path")
  module = import_user_module(name, f"config.task={name!r} (not one of {', '.join(TASKS)})")
  missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
  require(not missing, "task", name, f"the module {module.__file__} lacks {', '.join(missing)} "
          f"(a task module provides {', '.join(REQUIRED)}; see jaxdl/tasks/__init__.py)")
  return module


def of_run(workdir: str, needs: str = "", use: str = "") -> tuple[ml_collections.ConfigDict,
                                                                   ModuleType]:
  """(config, task module) of the run in workdir (its config.json); for a tool that needs the
  task's `needs` (e.g. 'predictor'), a UserError when the task lacks it, `use` saying what the
  tool is for."""
  config_path = os.path.join(workdir, "config.json")
  if not files.exists(config_path):
    raise UserError(f"{config_path}: not found (is --workdir a jaxdl run directory?)")
  try:
    saved = files.read_json(config_path)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: a damaged or foreign file
    raise UserError(f"{config_path}: not a jaxdl run's config.json ({first_line(e)})") from None
  if not isinstance(saved, dict) or not isinstance(saved.get("task"), str):
    raise UserError(f"{config_path}: not a jaxdl run's config.json (no 'task' name in it)")
  config = ml_collections.ConfigDict(saved)
  task = get(config.task)
  if needs and not hasattr(task, needs):
    raise UserError(f"--workdir={workdir}: the run's task {config.task!r} has no {needs} ({use})")
  return config, task
