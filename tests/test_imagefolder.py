"""The ImageFolder reader: layout, labels, channels, resizing, and one-line errors per mistake."""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image
import pytest

from jaxdl.data import imagefolder
from jaxdl.errors import UserError


def _write(path, array_HxWxC: np.ndarray, mode: str | None = None) -> np.ndarray:
  """Saves one image (PNG unless the name says otherwise); returns the array written."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array_HxWxC)
  (image.convert(mode) if mode else image).save(path)
  return array_HxWxC


def _folder(root, splits=("train", "test"), classes=("cat", "dog"), n=2, shape=(8, 8)):
  """A small ImageFolder of random grayscale PNGs; returns {split: [(array, label), ...]}."""
  rng = np.random.default_rng(0)
  written = {}
  for split in splits:
    written[split] = []
    for label, name in enumerate(classes):
      for i in range(n):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        written[split].append((_write(f"{root}/{split}/{name}/{i}.png", array), label))
  return written


def _raises(match: str, directory, **kwargs) -> str:
  """Asserts load_image_folder fails with a one-line UserError matching `match`."""
  with pytest.raises(UserError, match=match) as info:
    imagefolder.load_image_folder(str(directory), **kwargs)
  assert "\n" not in str(info.value)
  return str(info.value)


def test_round_trip_gray(tmp_path):
  # Class folders created in reverse order: labels must follow the sorted names, not creation.
  rng = np.random.default_rng(1)
  written = {"train": [], "test": []}
  for split, n in (("train", 3), ("test", 2)):
    for label, name in reversed(list(enumerate(["ant", "bee"]))):
      for i in range(n):
        array = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        written[split].append((_write(f"{tmp_path}/{split}/{name}/{i}.png", array), label))
  (tmp_path / "train" / "ant" / "README.txt").write_text("not an image")
  (tmp_path / "train" / "ant" / ".hidden.png").write_bytes(b"garbage, but hidden")
  os.makedirs(tmp_path / "train" / ".cache")  # a hidden folder is not a class
  splits, class_names = imagefolder.load_image_folder(str(tmp_path))
  assert class_names == ["ant", "bee"] and set(splits) == {"train", "test"}
  for split, n in (("train", 6), ("test", 4)):
    images, labels = splits[split]["image"], splits[split]["label"]
    assert images.shape == (n, 8, 8, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    expected = sorted(written[split], key=lambda item: item[1])  # label order, then file order
    np.testing.assert_array_equal(labels, [label for _, label in expected])
    np.testing.assert_array_equal(images[..., 0], np.stack([a for a, _ in expected]))


def test_channels(tmp_path):
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
  rgba = np.concatenate([rgb, np.full((6, 6, 1), 7, np.uint8)], axis=-1)
  for split in ("train", "test"):
    _write(f"{tmp_path}/rgb/{split}/a/x.png", rgb)
    _write(f"{tmp_path}/rgba/{split}/a/x.png", rgba)
  splits, _ = imagefolder.load_image_folder(str(tmp_path / "rgb"))
  np.testing.assert_array_equal(splits["train"]["image"][0], rgb)
  splits, _ = imagefolder.load_image_folder(str(tmp_path / "rgba"))
  np.testing.assert_array_equal(splits["test"]["image"][0], rgb)  # alpha dropped
  # One RGB file anywhere (here: in test) makes the whole dataset RGB, gray as R = G = B.
  gray = rng.integers(0, 256, (6, 6), dtype=np.uint8)
  _write(f"{tmp_path}/mixed/train/a/x.png", gray)
  _write(f"{tmp_path}/mixed/test/a/x.png", rgb)
  splits, _ = imagefolder.load_image_folder(str(tmp_path / "mixed"))
  assert splits["train"]["image"].shape == (1, 6, 6, 3)
  np.testing.assert_array_equal(splits["train"]["image"][0], np.stack([gray] * 3, -1))
  np.testing.assert_array_equal(splits["test"]["image"][0], rgb)


def test_other_modes_and_formats(tmp_path):
  # 16-bit gray is rescaled to 0..255 (PIL's own convert would clip it to 255); 'LA' and '1'
  # stay 1 channel; JPEG and BMP read; the extension matches case-insensitively.
  _write(f"{tmp_path}/train/a/16bit.png", np.full((4, 4), 65535, np.uint16))
  _write(f"{tmp_path}/train/a/la.png", np.full((4, 4), 9, np.uint8), mode="LA")
  _write(f"{tmp_path}/train/a/one.bmp", np.full((4, 4), 255, np.uint8), mode="1")
  _write(f"{tmp_path}/test/a/photo.JPG", np.full((4, 4), 100, np.uint8))
  splits, _ = imagefolder.load_image_folder(str(tmp_path))
  np.testing.assert_array_equal(splits["train"]["image"][:, 0, 0, 0], [255, 9, 255])
  assert splits["test"]["image"].shape == (1, 4, 4, 1)
  assert abs(int(splits["test"]["image"][0, 0, 0, 0]) - 100) <= 2  # JPEG is lossy


def test_image_size_resizes(tmp_path):
  _write(f"{tmp_path}/train/a/square.png", np.full((8, 8), 50, np.uint8))
  _write(f"{tmp_path}/train/b/wide.png", np.full((6, 10), 200, np.uint8))  # H=6, W=10
  _write(f"{tmp_path}/test/a/x.png", np.full((8, 8), 50, np.uint8))
  _write(f"{tmp_path}/test/b/x.png", np.full((6, 10), 200, np.uint8))
  _raises(r"/train/b/wide\.png: 10x6 pixels, but .*/train/a/square\.png is 8x8; set "
          r"data\.image_size", tmp_path)
  splits, _ = imagefolder.load_image_folder(str(tmp_path), image_size=4)
  for split in ("train", "test"):
    assert splits[split]["image"].shape == (2, 4, 4, 1)
    np.testing.assert_array_equal(splits[split]["image"][:, :, :, 0],
                                  np.stack([np.full((4, 4), 50), np.full((4, 4), 200)]))


@pytest.mark.parametrize("val_name", ["val", "validation", "valid"])
def test_val_synonyms_and_test_together(tmp_path, val_name):
  _folder(tmp_path, splits=("train", val_name, "test"))
  splits, _ = imagefolder.load_image_folder(str(tmp_path))
  assert set(splits) == {"train", "val", "test"}
  assert splits["val"]["image"].shape == splits["test"]["image"].shape == (4, 8, 8, 1)


def test_val_without_test(tmp_path):
  _folder(tmp_path, splits=("train", "validation"))
  splits, _ = imagefolder.load_image_folder(str(tmp_path))
  assert set(splits) == {"train", "val"}


def test_layout_errors(tmp_path):
  d = str(tmp_path)
  _raises(r"data\.path=.* is not a directory", tmp_path / "nothing")
  _raises(re.escape(f"{d}: no train/ folder (expected {d}/train/<class>/*.png|jpg)"), d)
  _folder(tmp_path, splits=("train",))
  _raises(re.escape(f"{d}: no test/ or val/ folder next to train/ (expected "
                    f"{d}/test/<class>/...)"), d)
  os.makedirs(tmp_path / "test")
  _raises(re.escape(f"{d}/test: no class folders"), d)
  _folder(tmp_path, splits=("test",), classes=("cat", "cow"))
  _raises(re.escape(f"{d}/test: classes differ from {d}/train's (missing: dog; extra: cow)"), d)
  os.makedirs(tmp_path / "val")
  os.makedirs(tmp_path / "validation")
  _raises(re.escape(f"{d}: both val/ and validation/ folders"), d)


def test_empty_class_folder(tmp_path):
  _folder(tmp_path)
  os.remove(tmp_path / "train" / "dog" / "0.png")
  os.remove(tmp_path / "train" / "dog" / "1.png")
  (tmp_path / "train" / "dog" / "notes.txt").write_text("no images here")
  _raises(re.escape(f"{tmp_path}/train/dog: no image files (.png, .jpg, ...)"), tmp_path)


@pytest.mark.parametrize("content", [b"not an image at all", b""])
def test_unreadable_image(tmp_path, content):
  _folder(tmp_path)
  (tmp_path / "test" / "dog" / "bad.png").write_bytes(content)
  _raises(re.escape(f"{tmp_path}/test/dog/bad.png: cannot read image (cannot identify"), tmp_path)


def test_truncated_image(tmp_path):
  # The header is intact (pass 1 succeeds); the pixels fail when decoded.
  _folder(tmp_path)
  path = tmp_path / "train" / "cat" / "big.png"
  _write(str(path), np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  _raises(re.escape(f"{path}: cannot read image ("), tmp_path)


def test_classes_json_round_trip_and_errors():
  names = ["cat", "dog", "naïve café"]
  text = imagefolder.classes_json(names)
  assert text.endswith("\n") and text.count("\n") == 1
  assert imagefolder.read_classes_json(text, "w/classes.json") == names
  for bad in ("{not json", '["cat"]', '{"classes": []}', '{"classes": [1, 2]}',
              '{"labels": ["cat"]}', '{"classes": ["a", "b", "a"]}'):
    with pytest.raises(UserError, match=r"^w/classes\.json: ") as info:
      imagefolder.read_classes_json(bad, "w/classes.json")
    assert "\n" not in str(info.value)


def test_is_image_folder(tmp_path):
  _folder(tmp_path / "folder")
  assert imagefolder.is_image_folder(str(tmp_path / "folder"))
  idx = tmp_path / "idx"
  os.makedirs(idx)
  for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
    (idx / name).write_bytes(b"\0\0\x08\x01")
  assert not imagefolder.is_image_folder(str(idx))
  (tmp_path / "train").write_text("a file named train is not the layout")
  assert not imagefolder.is_image_folder(str(tmp_path))
  assert not imagefolder.is_image_folder(str(tmp_path / "missing"))


def test_class_names_are_compared_in_nfc(tmp_path):
  """'café' written as NFC in train/ and as NFD in test/ (as macOS writes it) is one class, read
  from each split's own folder, named as train/ names it."""
  nfc, nfd = "caf\u00e9", "cafe\u0301"
  _folder(tmp_path, splits=("train",), classes=(nfc, "dog"))
  _folder(tmp_path, splits=("test",), classes=(nfd, "dog"))
  splits, names = imagefolder.load_image_folder(str(tmp_path))
  assert names == sorted([nfc, "dog"]) and len(splits["test"]["label"]) == 4
  _folder(tmp_path, splits=("train",), classes=(nfd,))  # both spellings in one split
  _raises(r"class folders .* differ only in their Unicode normalization; merge them", tmp_path)


def test_hidden_folders_are_skipped_aloud_and_tabs_in_names_refused(tmp_path, caplog):
  _folder(tmp_path)
  os.makedirs(tmp_path / "train" / ".ipynb_checkpoints")
  caplog.set_level("WARNING")
  _, names = imagefolder.load_image_folder(str(tmp_path))
  assert names == ["cat", "dog"]
  assert any("skipping hidden folder(s) .ipynb_checkpoints: not classes" in r.getMessage()
             for r in caplog.records)
  _folder(tmp_path, classes=("cat", "dog", "big\tcat"))
  _raises(r"class folder 'big\\tcat' has a tab or line break in its name; rename it", tmp_path)
