"""Test fixtures: tiny copies of each dataset's on-disk format (real file names, keys and layouts; a few random
images). Training never imports this module; it is in the package rather than under tests/ because
`benchmarks/pipeline.py` writes these copies too. Each writer returns what it wrote, so a reader can be checked
against it; the JPEG writers take the range of image sides (`sides`), small for tests, photo-sized for the
benchmark."""

import gzip
import json
import os
import pickle
import zipfile

import numpy as np

from prune4rel_jax.data import clothing1m, fashion_mnist


def _images(rng: np.random.Generator, n: int, h: int, w: int, c: int = 3) -> np.ndarray:
  return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _pickle(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=2)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # NHWC → the files' CHW rows


def write_cifar10(root: str, train_per_batch: int = 4, test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
  """cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} with every class in the training set."""
  rng = np.random.default_rng(seed)
  train_x, test_x = _images(rng, 5 * train_per_batch, 32, 32), _images(rng, test, 32, 32)
  train_y, test_y = np.arange(5 * train_per_batch) % 10, rng.integers(0, 10, test)
  folder = os.path.join(root, "cifar-10-batches-py")
  for b in range(5):
    part = slice(b * train_per_batch, (b + 1) * train_per_batch)
    _pickle(os.path.join(folder, f"data_batch_{b + 1}"),
            {"batch_label": f"training batch {b + 1} of 5", "labels": train_y[part].tolist(),
             "data": _cifar_rows(train_x[part]), "filenames": [f"img_{i}.png" for i in range(train_per_batch)]})
  _pickle(os.path.join(folder, "test_batch"), {"batch_label": "testing batch 1 of 1", "labels": test_y.tolist(),
                                                "data": _cifar_rows(test_x), "filenames": []})
  _pickle(os.path.join(folder, "batches.meta"), {"label_names": [f"class{i}" for i in range(10)]})
  return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}


def write_cifar100(root: str, train: int = 200, test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
  """cifar-100-python/{train, test, meta}; fine class f belongs to superclass `superclass[f]` (a shuffled, not
  consecutive, grouping of 5 fine classes per superclass, as in the real files)."""
  rng = np.random.default_rng(seed)
  superclass = rng.permutation(np.repeat(np.arange(20), 5))
  train_x, test_x = _images(rng, train, 32, 32), _images(rng, test, 32, 32)
  train_y, test_y = np.arange(train) % 100, rng.integers(0, 100, test)
  folder = os.path.join(root, "cifar-100-python")
  for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
    _pickle(os.path.join(folder, name), {"filenames": [], "batch_label": name, "fine_labels": y.tolist(),
                                         "coarse_labels": superclass[y].tolist(), "data": _cifar_rows(x)})
  _pickle(os.path.join(folder, "meta"), {"fine_label_names": [f"fine{i}" for i in range(100)],
                                         "coarse_label_names": [f"coarse{i}" for i in range(20)]})
  return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y,
          "superclass": superclass}


def cifar_n_labels(clean: np.ndarray, keys: tuple[str, ...], num_classes: int, seed: int = 0) -> dict:
  """A CIFAR-N label dict: `clean_label` plus, per key, the clean labels with a random third of them changed
  (every example whose position is 3i + the key's rank, so a class keeps members when its examples alternate)."""
  rng = np.random.default_rng(seed)
  labels = {"clean_label": clean.astype(np.int64)}
  for rank, key in enumerate(keys):
    noisy = clean.copy()
    flip = np.arange(len(clean)) % 3 == rank % 3
    noisy[flip] = (clean[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
    labels[key] = noisy.astype(np.int64)
  return labels


def write_torch_save(path: str, obj) -> None:
  """What `torch.save(obj, path)` writes for an object without tensors (a zip holding `<stem>/data.pkl`, its
  protocol-2 pickle), written without PyTorch."""
  stem = os.path.splitext(os.path.basename(path))[0]
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(f"{stem}/data.pkl", pickle.dumps(obj, protocol=2))
    archive.writestr(f"{stem}/byteorder", "little")
    archive.writestr(f"{stem}/version", "3\n")


def write_label_export(path: str, labels: dict) -> None:
  """The `.npz` or `.json` export of a CIFAR-N label dict (by the extension of `path`)."""
  if path.endswith(".npz"):
    np.savez(path, **labels)
  else:
    with open(path, "w") as f:
      json.dump({k: np.asarray(v).tolist() for k, v in labels.items()}, f)


def _write_idx_gz(path: str, array: np.ndarray) -> None:
  header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: str, train: int = 30, test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
  """The four gzipped IDX files of Fashion-MNIST."""
  rng = np.random.default_rng(seed)
  arrays = {"train_images": _images(rng, train, 28, 28, 1)[..., 0], "train_labels": np.arange(train) % 10,
            "test_images": _images(rng, test, 28, 28, 1)[..., 0], "test_labels": rng.integers(0, 10, test)}
  os.makedirs(root, exist_ok=True)
  for split, (images_file, labels_file) in fashion_mnist.FILES.items():
    _write_idx_gz(os.path.join(root, images_file), arrays[f"{split}_images"])
    _write_idx_gz(os.path.join(root, labels_file), arrays[f"{split}_labels"])
  return arrays


def write_jpeg(path: str, rng: np.random.Generator, size: tuple[int, int]) -> None:
  """A random JPEG of `size` (width, height): smooth colour ramps plus noise, so it compresses like a photo."""
  from PIL import Image

  w, h = size
  ramp = np.linspace(0, 255, w)[None, :, None] * rng.random(3) + np.linspace(0, 255, h)[:, None, None] * rng.random(3)
  pixels = np.clip(ramp / 2 + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def _sizes(rng: np.random.Generator, sides: tuple[int, int]) -> tuple[int, int]:
  """A random (width, height) with both sides in [sides[0], sides[1])."""
  return int(rng.integers(*sides)), int(rng.integers(*sides))


def write_webvision(root: str, per_class: int = 2, classes: int = 52, val_per_class: int = 1, seed: int = 0,
                    sides: tuple[int, int] = (40, 120)) -> dict[str, list]:
  """info/{train_filelist_google,val_filelist}.txt, google/qNNNN/*.jpg and val_images/*.jpg, with a few classes
  ≥ 50 (which mini-WebVision drops). Returns the kept (path, label) pairs of each list, in file order."""
  rng = np.random.default_rng(seed)
  train = [(f"google/q{c + 1:04d}/{i:06d}.jpg", c) for i in range(per_class) for c in range(classes)]
  val = [(f"val{classes * i + c:09d}.jpg", c) for i in range(val_per_class) for c in range(classes)]
  for path, _ in train:
    write_jpeg(os.path.join(root, path), rng, _sizes(rng, sides))
  for path, _ in val:
    write_jpeg(os.path.join(root, "val_images", path), rng, _sizes(rng, sides))
  os.makedirs(os.path.join(root, "info"), exist_ok=True)
  for name, pairs in (("train_filelist_google.txt", train), ("val_filelist.txt", val)):
    with open(os.path.join(root, "info", name), "w") as f:
      f.writelines(f"{path} {label}\n" for path, label in pairs)
  return {"train": [p for p in train if p[1] < 50], "val": [(os.path.join("val_images", p), c) for p, c in val
                                                            if c < 50]}


def write_clothing1m(root: str, layout: str = "original", train: int = 28, val: int = 14, test: int = 14,
                     seed: int = 0, sides: tuple[int, int] = (40, 120)) -> dict[str, list]:
  """Clothing-1M in the original's list layout (noisy_train.txt, clean_val.txt) or the official one (key lists +
  label key-value files, with extra labelled images outside the lists, as the real files). Returns each split's
  (path, label) pairs in list order."""
  rng = np.random.default_rng(seed)
  counts = {"train": train, "val": val, "test": test} if layout == "official" else {"train": train, "val": val}
  pairs, number = {}, 0
  for split, count in counts.items():
    pairs[split] = []
    for i in range(count):
      path = f"images/{number % 10}/{number % 100:02d}/{number:08d}.jpg"
      write_jpeg(os.path.join(root, path), rng, _sizes(rng, sides))
      pairs[split].append((path, i % clothing1m.NUM_CLASSES))
      number += 1

  def write(name: str, lines: list[str]) -> None:
    with open(os.path.join(root, name), "w") as f:
      f.writelines(line + "\n" for line in lines)

  if layout == "original":
    write("noisy_train.txt", [f"{p} {label}" for p, label in pairs["train"]])
    write("clean_val.txt", [f"{p} {label}" for p, label in pairs["val"]])
  else:
    unlisted = [("images/9/99/99999999.jpg", 3)]  # labelled but in no key list
    write("noisy_label_kv.txt", [f"{p} {label}" for p, label in unlisted + pairs["train"][::-1]])
    write("clean_label_kv.txt", [f"{p} {label}" for p, label in pairs["test"] + unlisted + pairs["val"]])
    for split, name in (("train", "noisy_train_key_list.txt"), ("val", "clean_val_key_list.txt"),
                        ("test", "clean_test_key_list.txt")):
      write(name, [p for p, _ in pairs[split]])
  return pairs


def write_imagenet(root: str, classes: int = 5, train_per_class: int = 3, val_per_class: int = 2, seed: int = 0,
                   sides: tuple[int, int] = (40, 120)) -> dict[str, list]:
  """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageFolder layout) plus a non-image file ImageFolder skips.
  Returns each split's (path relative to the split folder, label) pairs in ImageFolder order."""
  rng = np.random.default_rng(seed)
  wnids = sorted(f"n{int(w):08d}" for w in rng.choice(10**8, classes, replace=False))
  pairs = {}
  for split, count in (("train", train_per_class), ("val", val_per_class)):
    pairs[split] = []
    for label, wnid in enumerate(wnids):
      for i in range(count):
        path = os.path.join(wnid, f"{wnid}_{i}.JPEG")
        write_jpeg(os.path.join(root, split, path), rng, _sizes(rng, sides))
        pairs[split].append((path, label))
      with open(os.path.join(root, split, wnid, "notes.txt"), "w") as f:
        f.write("not an image\n")
  return pairs

