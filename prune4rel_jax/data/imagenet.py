"""ImageNet-1K (ILSVRC 2012) with synthetic label noise, as the original (`sym`, or `asym`: y → (y + 1) mod C).

Layout under `data.dir` (torchvision `ImageFolder`, as the original reads it):

  train/<wnid>/*.JPEG   one folder per class (1,281,167 images)
  val/<wnid>/*.JPEG     the 50,000 validation images sorted into the same class folders

Classes are the sorted folder names of train/ (label = position); files are taken in ImageFolder's order (sorted
walk, image extensions only), so example i is the original's example i. Images are stored as their original bytes
and decoded per batch: shorter side resized to 256 (torchvision `Resize(256)`), then the central 256×256 square is
kept so that every image has one shape. The original's train crop picks a 224 window anywhere along the longer
side; here it stays inside that central square (the test CenterCrop 224 is identical).
"""

import functools
import os

from prune4rel_jax.data import tfds_data
from prune4rel_jax.data.base import Dataset
from prune4rel_jax.data.noise import NOISE_TYPES, next_class_map
from prune4rel_jax.errors import UserError

# torchvision.datasets.folder.IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
  """(classes, [(path relative to root, label)]) in torchvision ImageFolder's order."""
  if not os.path.isdir(root):
    raise UserError(f"ImageNet: {root} does not exist; expected one sub-folder of images per class there")
  classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
  if not classes:
    raise UserError(f"ImageNet: {root} has no class sub-folders; expected <wnid>/<image>.JPEG")
  pairs = []
  for label, name in enumerate(classes):
    for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
      pairs += [(os.path.relpath(os.path.join(folder, f), root), label) for f in sorted(files)
                if f.lower().endswith(IMAGE_EXTENSIONS)]
  return classes, pairs


class ImageNetBuilder(tfds_data.Builder):
  """ImageNet-1K from its train/ and val/ class folders."""
  name = "prune4rel_imagenet"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """Download ILSVRC 2012 from https://image-net.org (registration needed), extract
  the training images into train/<wnid>/ and sort the validation images into val/<wnid>/ (e.g. with the
  valprep.sh script commonly used for PyTorch's ImageFolder); the manual dir (`data.dir`) holds train/ and val/."""
  EXPECTED = "set data.dir to the ImageNet folder holding train/<wnid>/ and val/<wnid>/ (ImageFolder layout)"

  def read_splits(self, manual_dir):
    splits = {}
    classes = None
    for split in ("train", "val"):
      root = os.path.join(manual_dir, split)
      split_classes, pairs = image_folder(root)
      if classes is not None and split_classes != classes:
        raise UserError(f"ImageNet: the class folders of {root} differ from those of train/ "
                        f"({len(split_classes)} vs {len(classes)}); expected the same wnids")
      classes = split_classes
      if not pairs:
        raise UserError(f"ImageNet: {root} has no images with extensions {IMAGE_EXTENSIONS}")
      splits[split] = tfds_data.file_split(root, pairs, f"ImageNet {split}/")
    self.info.metadata["classes"] = classes
    return splits


def load(cfg) -> Dataset:
  if cfg.noise_type not in NOISE_TYPES:
    raise UserError(f"data.noise_type={cfg.noise_type!r}: ImageNet has no real noisy labels; use one of "
                    f"{NOISE_TYPES}")
  builder = tfds_data.prepare(ImageNetBuilder, cfg.dir, cfg.tfds_dir)
  num_classes = len(builder.info.metadata["classes"])
  decode = functools.partial(tfds_data.resize_shorter_center, size=tfds_data.DECODED_SIZE)
  return tfds_data.encoded_dataset(cfg, builder, num_classes, "val", decode, clean_known=True,
                                   asym_map=next_class_map(num_classes))
