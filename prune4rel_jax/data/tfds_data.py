"""tensorflow_datasets plumbing shared by the file-based datasets: build once into array_record, then random access.

Every dataset is a `tfds.core.GeneratorBasedBuilder` that reads the user's files from `manual_dir` (`data.dir`)
and writes array_record shards under a tfds data dir (`data.tfds_dir`, default tfds's own: `$TFDS_DATA_DIR` or
`~/tensorflow_datasets`). Nothing needs TensorFlow, neither building nor reading: features are plain
`tfds.features.Tensor`s — raw uint8 pixels for the small datasets, the original encoded file bytes (JPEG, PNG...)
for the large ones, decoded with Pillow per batch — because tfds's `Image` feature calls TensorFlow to encode.

Records keep the generation order (`disable_shuffling`), so record i is example i; each record also stores its
`index`, which every read checks. Each split's labels are stored in the dataset's `metadata.json`, so a run gets
all labels without reading a single image record.
"""

import concurrent.futures
import dataclasses
import fcntl
import functools
import io
import os
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from prune4rel_jax.data.base import Dataset
from prune4rel_jax.errors import UserError
from prune4rel_jax.progress import LOG

# Decoding threads shared by every lazy split (threads start on first use).
_DECODE_POOL = concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1))


@dataclasses.dataclass(frozen=True)
class Split:
  """One split as a builder generates it: its int64 labels and a function giving example i's image (uint8 pixels
  or the encoded file's bytes)."""
  labels: np.ndarray
  image_at: Callable[[int], object]


class Builder(tfds.core.ShardBasedBuilder, skip_registration=True):
  """Base of every dataset builder: subclasses set `name`, `IMAGE_SHAPE` (None: encoded bytes, decoded on read),
  `MANUAL_DOWNLOAD_INSTRUCTIONS` and `EXPECTED` (one line: what data.dir must hold), and implement
  `read_splits(manual_dir) -> {split: Split}`, which must check the files it reads and raise `UserError` naming
  any missing or malformed one.

  A `ShardBasedBuilder`, not a `GeneratorBasedBuilder`: the latter passes every example through a shuffler, which
  keeps order only by sorting a single temporary bucket in memory and, past 1 GB, needs TensorFlow's file API;
  here shards are written straight, in order."""

  VERSION = tfds.core.Version("1.0.0")
  IMAGE_SHAPE: tuple[int, int, int] | None = None
  EXPECTED = ""
  SHARD_SIZE = 10_000  # examples per array_record shard

  def read_splits(self, manual_dir: str) -> dict[str, Split]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    if self.IMAGE_SHAPE is None:
      image = tfds.features.Tensor(shape=(), dtype=np.object_)  # the file's bytes
    else:
      image = tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8)
    features = tfds.features.FeaturesDict({"image": image, "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                                           "index": tfds.features.Tensor(shape=(), dtype=np.int64)})
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features,
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def _shard_iterators_per_split(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    splits = self.read_splits(manual_dir)
    self.info.metadata["source"] = os.path.abspath(manual_dir)
    self.info.metadata["labels"] = {name: split.labels.tolist() for name, split in splits.items()}
    return {name: [functools.partial(self._examples, split, start)
                   for start in range(0, len(split.labels), self.SHARD_SIZE)]
            for name, split in splits.items()}

  def _examples(self, split: Split, start: int):
    for i in range(start, min(start + self.SHARD_SIZE, len(split.labels))):
      yield i, {"image": split.image_at(i), "label": int(split.labels[i]), "index": i}


def _is_built(builder: Builder) -> bool:
  return os.path.isfile(os.path.join(builder.data_path, "dataset_info.json"))


def _build(builder: Builder, manual_dir: str) -> None:
  """Builds under a lock file beside the dataset's folder. Runs started side by side on one machine (two sweeps,
  say) would otherwise each build a copy, and the slower one would fail when moving its finished copy into place."""
  root = builder.data_path.parent.parent  # <tfds data dir>/<name>/<version>
  root.mkdir(parents=True, exist_ok=True)
  with open(root / f"{builder.name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
    if _is_built(builder):
      return  # the run this one waited for built it
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      raise UserError(f"{builder.name}: {manual_dir or 'data.dir'!r} is missing or empty; {builder.EXPECTED}")
    LOG.info("building %s from %s into %s (once)", builder.name, manual_dir, builder.data_path)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def prepare(builder_class: type[Builder], manual_dir: str, tfds_dir: str) -> Builder:
  """The built dataset, building it first if this tfds data dir has no copy (once; later runs only read). In a
  multi-process run process 0 builds first and the others wait, then take its copy (shared disk) or build their
  own (local disks)."""
  import jax

  builder = builder_class(data_dir=tfds_dir or None, file_format="array_record")
  if not _is_built(builder) and jax.process_count() > 1:
    if jax.process_index() == 0:
      _build(builder, manual_dir)
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"built {builder.name}")
    builder = builder_class(data_dir=tfds_dir or None, file_format="array_record")
  if not _is_built(builder):
    _build(builder, manual_dir)
    builder = builder_class(data_dir=tfds_dir or None, file_format="array_record")
  built_from = builder.info.metadata.get("source")
  if os.path.isdir(manual_dir) and built_from != os.path.abspath(manual_dir):
    raise UserError(f"{builder.name}: the copy in {builder.data_path} was built from {built_from}, not from "
                    f"data.dir={manual_dir!r}; delete that folder to rebuild, or set data.tfds_dir to another one")
  return builder


def split_labels(builder: Builder, split: str) -> np.ndarray:
  return np.asarray(builder.info.metadata["labels"][split], np.int64)


def _check_indices(records: list[dict], expected: np.ndarray, where: str) -> None:
  got = np.fromiter((r["index"] for r in records), np.int64, len(records))
  if not np.array_equal(got, expected):
    raise UserError(f"{where}: records are out of order (asked for {expected[:4].tolist()}..., got "
                    f"{got[:4].tolist()}...); delete the built copy to rebuild it")


def read_all_images(builder: Builder, split: str) -> np.ndarray:
  """Every image of a raw-pixel split as one uint8 array (the small datasets live in RAM)."""
  source = builder.as_data_source(split)
  records = source.__getitems__(list(range(len(source))))
  _check_indices(records, np.arange(len(source)), f"{builder.data_dir} {split}")
  return np.stack([r["image"] for r in records]) if records else np.zeros((0, *builder.IMAGE_SHAPE), np.uint8)


class EncodedImages:
  """A lazy uint8 [N, H, W, C] array over a split of encoded images: `images[index_array]` reads those records
  and decodes them with `decode(bytes, what) -> [H, W, C]` (`what` names the record for errors) in a thread pool
  (Pillow releases the GIL while decoding).

  It has what the pipeline uses of an array: `shape`, `dtype`, `len()` and integer / integer-array indexing."""

  def __init__(self, builder: Builder, split: str, decode: Callable[[bytes, str], np.ndarray],
               image_shape: tuple[int, int, int]):
    self._source = builder.as_data_source(split)
    self._where = f"{builder.data_dir} {split}"
    self._decode = decode
    self.shape = (len(self._source), *image_shape)
    self.dtype = np.dtype(np.uint8)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    if np.ndim(index) == 0:
      return self[np.asarray([index])][0]
    index = np.asarray(index, np.int64).reshape(-1)
    records = self._source.__getitems__(index.tolist())
    _check_indices(records, index, self._where)
    images = list(_DECODE_POOL.map(lambda r: self._decode(r["image"], f"{self._where} record {r['index']}"),
                                   records))
    return np.stack(images) if images else np.zeros((0, *self.shape[1:]), np.uint8)


def open_image(data: bytes, what: str):
  """A Pillow image of encoded `data` in RGB; a UserError naming `what` if it is not an image file. Truncated
  files decode with the missing part grey, as in the original (WebVision has a few)."""
  from PIL import Image, ImageFile, UnidentifiedImageError

  ImageFile.LOAD_TRUNCATED_IMAGES = True
  try:
    return Image.open(io.BytesIO(data)).convert("RGB")
  except (UnidentifiedImageError, OSError) as error:
    raise UserError(f"{what}: not a readable image ({error})") from error


def check_image_file(path: str) -> bytes:
  """The bytes of the image file `path`, after checking that Pillow recognises it (header only, cheap)."""
  from PIL import Image, UnidentifiedImageError

  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist; expected an image file there (check data.dir)")
  with open(path, "rb") as f:
    data = f.read()
  try:
    Image.open(io.BytesIO(data))
  except (UnidentifiedImageError, OSError) as error:
    raise UserError(f"{path}: not a readable image file ({error})") from error
  return data


def file_split(root: str, pairs: list[tuple[str, int]], what: str) -> Split:
  """A split of image files (paths relative to `root`) and labels; every file must exist (checked now, before a
  long build starts) and be an image (checked while building)."""
  paths = [os.path.join(root, path) for path, _ in pairs]
  missing = [path for path in paths if not os.path.isfile(path)]
  if missing:
    raise UserError(f"{what}: {len(missing)} of its {len(paths)} images are missing, e.g. {missing[0]}; "
                    f"check data.dir")
  return Split(labels=np.array([label for _, label in pairs], np.int64), image_at=lambda i: check_image_file(paths[i]))


def eval_split(cfg, builder: Builder, default: str) -> str:
  """The split used as the clean test set: `data.eval_split`, or the original's choice `default` when empty."""
  name = cfg.eval_split or default
  choices = sorted(set(builder.info.metadata["labels"]) - {"train"})
  if name not in choices:
    raise UserError(f"data.eval_split={cfg.eval_split!r}; {builder.name} as built has {choices}")
  return name


def read_label_list(path: str, what: str) -> list[tuple[str, int]]:
  """The (relative path, integer label) pairs of a 'path label' text file (WebVision, Clothing-1M lists)."""
  if not os.path.isfile(path):
    raise UserError(f"{what}: {path} does not exist; check data.dir")
  pairs = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        raise UserError(f"{path} line {number}: expected '<relative image path> <integer label>', got {line!r}")
      pairs.append((fields[0], int(fields[1])))
  return pairs


def resize_square(data: bytes, what: str, size: int) -> np.ndarray:
  """Decode and resize to size × size, ignoring the aspect ratio: WebVision and Clothing-1M in the original
  (`Image.open(path).convert('RGB').resize((256, 256))`, Pillow's bicubic)."""
  from PIL import Image

  return np.asarray(open_image(data, what).resize((size, size), Image.BICUBIC))


def resize_shorter_center(data: bytes, what: str, size: int) -> np.ndarray:
  """Decode, resize the shorter side to `size` (torchvision `Resize(size)`: bilinear, the longer side truncated),
  then keep the central size × size square (torchvision `CenterCrop` rounding), so that every image has one shape."""
  from PIL import Image

  image = open_image(data, what)
  w, h = image.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  image = image.resize((new_w, new_h), Image.BILINEAR)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return np.asarray(image.crop((left, top, left + size, top + size)))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DECODED_SIZE = 256  # the 224-px datasets are decoded at 256×256; the views crop `data.image_size` from that


def encoded_dataset(cfg, builder: Builder, num_classes: int, default_eval: str, decode, clean_known: bool,
                    asym_map: dict[int, int] | None = None) -> Dataset:
  """A `Dataset` of lazily decoded images (WebVision, Clothing-1M, ImageNet), decoded to 256×256 per batch."""
  shape = (DECODED_SIZE, DECODED_SIZE, 3)
  labels = split_labels(builder, "train")
  test = eval_split(cfg, builder, default_eval)
  return Dataset(name=cfg.name, num_classes=num_classes, train_images=EncodedImages(builder, "train", decode, shape),
                 train_labels=labels, train_clean_labels=labels if clean_known else None,
                 test_images=EncodedImages(builder, test, decode, shape), test_labels=split_labels(builder, test),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, asym_map=asym_map)


def real_noise_dataset(cfg, builder_cls, num_classes: int, what: str) -> Dataset:
  """WebVision and Clothing-1M: training labels that are real noise (no synthetic noise on top), images squashed
  to 256×256 as the original, and the clean validation split as the default test set."""
  if cfg.noise_type != "clean":
    raise UserError(f"data.noise_type={cfg.noise_type!r}: {what}'s labels are real noise already; use "
                    f"data.noise_type=clean (no synthetic noise on top), as the original")
  builder = prepare(builder_cls, cfg.dir, cfg.tfds_dir)
  decode = functools.partial(resize_square, size=DECODED_SIZE)
  return encoded_dataset(cfg, builder, num_classes, "val", decode, clean_known=False)
