"""mini-WebVision: the Google images of the first 50 WebVision 1.0 classes (65,944 images), its real web label
noise, evaluated on the WebVision validation images of those classes (2,500), as the original.

Layout under `data.dir` (the WebVision 1.0 "resized" release, https://data.vision.ee.ethz.ch/cvl/webvision/):

  info/train_filelist_google.txt   "<path relative to data.dir> <label>" per line, e.g. google/q0001/000000.jpg 0
  info/val_filelist.txt            "<file name> <label>" per line; the file is val_images/<file name>
  google/...                       the training images the list names
  val_images/...                   the validation images

Lines with label ≥ 50 are dropped and the rest keep their file order (example i = i-th kept line). Images are
stored as their original bytes and decoded per batch to 256×256 (aspect ratio not kept, as the original).
"""

import os

from prune4rel_jax.data import tfds_data
from prune4rel_jax.data.base import Dataset
from prune4rel_jax.errors import UserError

NUM_CLASSES = 50


class WebVisionBuilder(tfds_data.Builder):
  """mini-WebVision (first 50 classes, Google subset) from the WebVision 1.0 file lists."""
  name = "prune4rel_mini_webvision"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """Download WebVision 1.0 (resized images, Google subset and validation set, plus
  the `info` folder) from https://data.vision.ee.ethz.ch/cvl/webvision/download.html and extract it so that the
  manual dir (`data.dir`) holds info/train_filelist_google.txt, info/val_filelist.txt, google/ and val_images/."""
  EXPECTED = "set data.dir to the WebVision 1.0 folder holding info/, google/ and val_images/"

  def read_splits(self, manual_dir):
    splits = {}
    for split, list_name, folder in (("train", "train_filelist_google.txt", ""), ("val", "val_filelist.txt",
                                                                                   "val_images")):
      list_path = os.path.join(manual_dir, "info", list_name)
      pairs = [(os.path.join(folder, path), label)
               for path, label in tfds_data.read_label_list(list_path, f"WebVision {split} list")
               if label < NUM_CLASSES]
      if not pairs:
        raise UserError(f"{list_path}: no line with a label below {NUM_CLASSES}; expected the WebVision 1.0 list")
      splits[split] = tfds_data.file_split(manual_dir, pairs, list_path)
    return splits


def load(cfg) -> Dataset:
  return tfds_data.real_noise_dataset(cfg, WebVisionBuilder, NUM_CLASSES, "WebVision")
