"""Clothing-1M (Xiao et al. 2015): 1M clothing images from shopping sites with real noisy labels, 14 classes.

Two layouts under `data.dir` are accepted (the first whose list files exist wins); image paths in the lists are
relative to `data.dir`:

  the original's (kaist-dmlab/Prune4Rel reads these):
    noisy_train.txt            "<path> <label>" per line: the 1M noisy training images
    clean_val.txt              "<path> <label>": the clean validation images (the original's test set)
  the official release (as DivideMix reads it):
    noisy_label_kv.txt         "<path> <label>" for every noisily labelled image (images/0/00/xxx.jpg 4)
    noisy_train_key_list.txt   the 1M training paths (labels from noisy_label_kv.txt)
    clean_label_kv.txt         "<path> <label>" for every cleanly labelled image
    clean_val_key_list.txt     the 14,313 clean validation paths
    clean_test_key_list.txt    the 10,526 clean test paths (the benchmark's usual test set)

The splits are `train`, `val` and, in the official layout, `test`; `data.eval_split` picks the test set (default
`val`, the original's). Images are decoded per batch to 256×256 (aspect ratio not kept), as the original.
"""

import functools
import os

from prune4rel_jax.data import tfds_data
from prune4rel_jax.data.base import Dataset
from prune4rel_jax.errors import UserError

NUM_CLASSES = 14
ORIGINAL_FILES = ("noisy_train.txt", "clean_val.txt")
OFFICIAL_FILES = ("noisy_label_kv.txt", "noisy_train_key_list.txt", "clean_label_kv.txt", "clean_val_key_list.txt",
                  "clean_test_key_list.txt")


def _read_keys(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise UserError(f"Clothing-1M key list: {path} does not exist; check data.dir")
  with open(path) as f:
    keys = [line.strip() for line in f if line.strip()]
  bad = next((key for key in keys if len(key.split()) != 1), None)
  if bad is not None:
    raise UserError(f"{path}: expected one image path per line, got {bad!r}")
  return keys


def _labelled(keys_file: str, labels_file: str) -> list[tuple[str, int]]:
  """The paths of `keys_file` with their labels from the key-value file `labels_file`."""
  labels = dict(tfds_data.read_label_list(labels_file, "Clothing-1M label file"))
  keys = _read_keys(keys_file)
  missing = next((key for key in keys if key not in labels), None)
  if missing is not None:
    raise UserError(f"{keys_file}: {missing} has no label in {labels_file}")
  return [(key, labels[key]) for key in keys]


class Clothing1mBuilder(tfds_data.Builder):
  """Clothing-1M from the original's list files or from the official key/label files."""
  name = "prune4rel_clothing1m"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""Clothing-1M is distributed by its authors on request
  (https://github.com/Cysu/noisy_label). Put in the manual dir (`data.dir`) the images/ folder and either
  {', '.join(ORIGINAL_FILES)} (the original's lists) or {', '.join(OFFICIAL_FILES)} (the official release)."""
  EXPECTED = (f"set data.dir to the Clothing-1M folder holding images/ and either {' + '.join(ORIGINAL_FILES)} or "
              f"the official {OFFICIAL_FILES[0]} + {OFFICIAL_FILES[1]} + ...")

  def read_splits(self, manual_dir):
    path = functools.partial(os.path.join, manual_dir)
    if all(os.path.isfile(path(name)) for name in ORIGINAL_FILES):
      pairs = {"train": tfds_data.read_label_list(path("noisy_train.txt"), "Clothing-1M training list"),
               "val": tfds_data.read_label_list(path("clean_val.txt"), "Clothing-1M validation list")}
    elif os.path.isfile(path(OFFICIAL_FILES[0])):
      pairs = {"train": _labelled(path("noisy_train_key_list.txt"), path("noisy_label_kv.txt")),
               "val": _labelled(path("clean_val_key_list.txt"), path("clean_label_kv.txt")),
               "test": _labelled(path("clean_test_key_list.txt"), path("clean_label_kv.txt"))}
    else:
      raise UserError(f"Clothing-1M: {manual_dir} has neither {' and '.join(ORIGINAL_FILES)} (the original's "
                      f"lists) nor {OFFICIAL_FILES[0]} (the official release)")
    for split, split_pairs in pairs.items():
      bad = next(((p, label) for p, label in split_pairs if not 0 <= label < NUM_CLASSES), None)
      if bad is not None:
        raise UserError(f"Clothing-1M {split} list: {bad[0]} has label {bad[1]}, expected 0..{NUM_CLASSES - 1}")
    return {split: tfds_data.file_split(manual_dir, split_pairs, f"Clothing-1M {split} list")
            for split, split_pairs in pairs.items()}


def load(cfg) -> Dataset:
  return tfds_data.real_noise_dataset(cfg, Clothing1mBuilder, NUM_CLASSES, "Clothing-1M")
