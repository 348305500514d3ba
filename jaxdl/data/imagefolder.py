"""Image classification from the ImageFolder layout (DIR/<split>/<class>/<image>), in memory.

The layout torchvision's and TFDS's ImageFolder read, so a user's own photos need no conversion:

  DIR/train/<class>/*.png|jpg|jpeg|bmp|gif|webp   and DIR/test/<class>/... and/or DIR/val/...

Class names are the train split's folder names, sorted, and files are read in sorted order, so
label i = class_names[i] and the example order are the same on every machine and every run.
Images come back as uint8[N,H,W,C] with C = 1 when every file of every split is grayscale, and
C = 3 otherwise (a dataset mixing both is converted to RGB throughout; alpha is dropped).
"""

from __future__ import annotations

import collections
import io
import json
import os
from typing import Iterator
import unicodedata

from absl import logging

import numpy as np
from PIL import Image

from jaxdl import files as jfiles  # `files` is image_folder_chunks' list of images
from jaxdl.errors import UserError, first_line

Splits = dict[str, dict[str, np.ndarray]]
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}
CLASSES_FILE = "classes.json"  # WORKDIR/classes.json: the label -> class-name table of a run
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")  # matched lowercased
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
# What Image.open/.load raise for unreadable files (UnidentifiedImageError is an OSError).
_PIL_ERRORS = (OSError, ValueError, Image.DecompressionBombError, SyntaxError)


def is_image_folder(directory: str) -> bool:
  """True when directory/train is a directory (the layout's sign).

  IDX directories (MNIST's four files) have files only, so the two never look alike."""
  return jfiles.is_dir(os.path.join(directory, "train"))


def _listing(directory: str, folders: bool) -> list[str]:
  """Sorted names of directory's non-hidden subfolders (folders=True) or files (local or gs://)."""
  try:
    entries = jfiles.list_dir(directory)
  except OSError as e:
    raise UserError(f"{directory}: cannot list folder ({e.strerror or first_line(e)})") from None
  found = [n for n, kind in entries if kind == ("dir" if folders else "file")]
  hidden = sorted(n for n in found if n.startswith("."))
  if hidden and folders:  # .ipynb_checkpoints and the like: never a class, but said, not silent
    logging.warning("%s: skipping hidden folder(s) %s: not classes", directory, _some(hidden))
  return sorted(n for n in found if not n.startswith("."))


def _some(names: list[str]) -> str:
  """A short list for a one-line message: 1000 ImageNet class names must not be its length."""
  return ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")


def _split_dirs(directory: str) -> dict[str, str]:
  """{split: its folder} for the splits present; two synonyms of one split are ambiguous."""
  found = {}
  for split, names in SPLIT_DIRS.items():
    present = [n for n in names if jfiles.is_dir(os.path.join(directory, n))]
    if len(present) > 1:
      raise UserError(f"{directory}: both {present[0]}/ and {present[1]}/ folders; keep one "
                      f"as the {split} split")
    if present:
      found[split] = os.path.join(directory, present[0])
  return found


def _class_folders(split_dir: str) -> dict[str, str]:
  """{class name in Unicode NFC: its folder's name} of a split. Names are compared in NFC: one
  name typed on two systems (macOS writes NFD) is one class, not 'missing: café; extra: café'."""
  classes = _listing(split_dir, folders=True)
  if not classes:
    raise UserError(f"{split_dir}: no class folders (expected {split_dir}/<class>/*.png|jpg)")
  bad = [n for n in classes if any(c in n for c in "\t\n\r")]
  if bad:  # jaxdl.predict prints 'label<TAB>probability<TAB>file' lines
    raise UserError(f"{split_dir}: class folder {bad[0]!r} has a tab or line break in its "
                    f"name; rename it")
  folders = {}
  for name in classes:
    folders.setdefault(unicodedata.normalize("NFC", name), []).append(name)
  twins = [names for names in folders.values() if len(names) > 1]
  if twins:
    raise UserError(f"{split_dir}: class folders {twins[0][0]!r} and {twins[0][1]!r} differ "
                    f"only in their Unicode normalization; merge them")
  return {nfc: names[0] for nfc, names in folders.items()}


def _image_files(class_dir: str) -> list[str]:
  names = [n for n in _listing(class_dir, folders=False)
           if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]  # a README.txt is not an image
  if not names:
    raise UserError(f"{class_dir}: no image files (.png, .jpg, ...)")
  return [os.path.join(class_dir, n) for n in names]


def _open(path: str) -> Image.Image:
  """Image.open of a local file, or of a gs:// object's bytes (fetched whole: an image is small,
  and PIL's many small reads and seeks would each be a request)."""
  return Image.open(io.BytesIO(jfiles.read_bytes(path)) if jfiles.is_url(path) else path)


def _header(path: str) -> tuple[str, tuple[int, int]]:
  """(mode, (width, height)) of an image file; Image.open reads the header, not the pixels."""
  try:
    with _open(path) as image:
      return image.mode, image.size
  except _PIL_ERRORS as e:
    raise UserError(f"{path}: cannot read image ({first_line(e)})") from None


def _to_8bit_gray(image: Image.Image) -> Image.Image:
  if image.mode == "I" or image.mode.startswith("I;16"):
    # PIL's convert('L') clips 16-bit values at 255 (a real 16-bit scan turns white): rescale.
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8))
  return image.convert("L")  # '1' becomes 0/255, 'LA' drops alpha, 'F' is clipped to 0..255


def read_image(path: str, channels: int, size_hw: tuple[int, int] | None = None) -> np.ndarray:
  """One file as uint8[H,W,channels], resized (bilinear) to size_hw = (H, W) when given and
  different. Also what jaxdl.predict reads an image with."""
  try:
    with _open(path) as image:
      image.load()  # decodes now, so a truncated file fails here with its own name
      if image.mode in _GRAY_MODES:
        image = _to_8bit_gray(image)
      image = image.convert("L" if channels == 1 else "RGB")  # a no-op when already there
  except _PIL_ERRORS as e:
    raise UserError(f"{path}: cannot read image ({first_line(e)})") from None
  if size_hw is not None and image.size != (size_hw[1], size_hw[0]):
    image = image.resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR)
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


def load_image_folder(directory: str, image_size: int = 0) -> tuple[Splits, list[str]]:
  """Returns ({'train': {'image': uint8[N,H,W,C], 'label': int32[N]}, 'val'/'test': ...},
  class_names).

  class_names = sorted train class-folder names; label i = class_names[i]. Files in each class
  folder are read sorted by name. image_size > 0 resizes every image to image_size x image_size
  (bilinear); image_size == 0 keeps the files' sizes, which must then all be equal. C is 1 when
  every file of every split is grayscale, else 3: a dataset mixing both becomes RGB throughout.
  """
  chunks, class_names = image_folder_chunks(directory, image_size, chunk=None)
  return {split: next(rows) for split, rows in chunks.items()}, class_names


def image_folder_chunks(directory: str, image_size: int = 0, chunk: int | None = 1024
                        ) -> tuple[dict[str, Iterator[dict[str, np.ndarray]]], list[str]]:
  """load_image_folder's splits as iterators of `chunk` rows at a time (None: one chunk of
  all), decoded as they are asked for (jaxdl.prepare's streaming writer); the folders' checks
  all run before this returns."""
  if not jfiles.is_dir(directory):
    raise UserError(f"data.path={directory!r} is not a directory")
  if image_size < 0:
    raise UserError(f"data.image_size={image_size} must be >= 0 (0 keeps the files' sizes)")
  if not is_image_folder(directory):
    raise UserError(f"{directory}: no train/ folder (expected {directory}/train/<class>/*.png|jpg)")
  split_dirs = _split_dirs(directory)
  if len(split_dirs) == 1:
    raise UserError(f"{directory}: no test/ or val/ folder next to train/ (expected "
                    f"{directory}/test/<class>/...)")
  # The class names are the train folders' own, sorted; another split's folder of a class is
  # the one whose name is the same in NFC.
  folders = {split: _class_folders(split_dir) for split, split_dir in split_dirs.items()}
  classes = sorted(folders["train"].items(), key=lambda nfc_folder: nfc_folder[1])  # by name
  class_names = [name for _, name in classes]
  train_nfc = set(folders["train"])
  for split, split_dir in split_dirs.items():
    missing = sorted(folders["train"][n] for n in train_nfc - set(folders[split]))
    extra = sorted(folders[split][n] for n in set(folders[split]) - train_nfc)
    if missing or extra:
      parts = ([f"missing: {_some(missing)}"] if missing else []) + (
          [f"extra: {_some(extra)}"] if extra else [])
      raise UserError(f"{split_dir}: classes differ from {split_dirs['train']}'s "
                      f"({'; '.join(parts)})")
  files = {split: [(path, label) for label, (nfc, _) in enumerate(classes)
                   for path in _image_files(os.path.join(split_dir, folders[split][nfc]))]
           for split, split_dir in split_dirs.items()}

  # Pass 1, headers only: the channel count depends on every file of every split, and equal
  # sizes are checked before any pixels are decoded.
  headers = {split: [_header(path) for path, _ in items] for split, items in files.items()}
  modes = {mode for split_headers in headers.values() for mode, _ in split_headers}
  channels = 1 if modes <= _GRAY_MODES else 3
  first_path, (width, height) = files["train"][0][0], headers["train"][0][1]
  if not image_size:
    for split, items in files.items():
      for (path, _), (_, size) in zip(items, headers[split]):
        if size != (width, height):
          raise UserError(f"{path}: {size[0]}x{size[1]} pixels, but {first_path} is "
                          f"{width}x{height}; set data.image_size to resize them all")
  height, width = (image_size, image_size) if image_size else (height, width)

  # Pass 2: decode straight into one preallocated array per chunk (no second copy to stack).
  def decoded(items):
    size = chunk or max(len(items), 1)
    for start in range(0, len(items), size):
      part = items[start:start + size]
      images_NxHxWxC = np.empty((len(part), height, width, channels), np.uint8)
      for i, (path, _) in enumerate(part):
        pixels_HxWxC = read_image(path, channels, (height, width) if image_size else None)
        if pixels_HxWxC.shape != images_NxHxWxC.shape[1:]:  # a header that lied about its size
          raise UserError(f"{path}: cannot read image (decoded to {pixels_HxWxC.shape[1]}x"
                          f"{pixels_HxWxC.shape[0]} pixels, header says {width}x{height})")
        images_NxHxWxC[i] = pixels_HxWxC
      yield {"image": images_NxHxWxC, "label": np.asarray([label for _, label in part], np.int32)}

  return {split: decoded(items) for split, items in files.items()}, class_names


def classes_json(class_names: list[str], image_shape: tuple[int, ...] = ()) -> str:
  """The text of WORKDIR/classes.json: {"classes": [...], "image_shape": [H, W, C]}, label i =
  classes[i], newline-ended; what jaxdl.predict needs to read new images as training did."""
  return json.dumps({"classes": list(class_names), "image_shape": list(image_shape)}) + "\n"


def read_classes_json(text: str, path: str) -> list[str]:
  """The class names of classes_json's text; `path` names the file in the UserError if
  malformed. (The image shape: json.loads(text)["image_shape"].)"""
  try:
    value = json.loads(text)
  except ValueError as e:
    raise UserError(f"{path}: not valid JSON ({first_line(e)})") from None
  classes = value.get("classes") if isinstance(value, dict) else None
  if (not isinstance(classes, list) or not classes
      or not all(isinstance(c, str) for c in classes)):
    raise UserError(f'{path}: expected {{"classes": ["name", ...]}} (a non-empty list of '
                    f"class names)")
  repeated = sorted(c for c, n in collections.Counter(classes).items() if n > 1)
  if repeated:
    raise UserError(f"{path}: class names repeat ({_some(repeated)})")
  return classes
