"""Images/s of the grain training pipeline per dataset, with the training augmentations on.

  python benchmarks/pipeline.py                       # every dataset; fake files, real Fashion-MNIST if installed
  python benchmarks/pipeline.py --datasets webvision,imagenet --steps 10 --read-threads 2
  python benchmarks/pipeline.py --datasets cifar10 --workers 4      # grain worker processes (config.loading)

For each dataset the script writes a fake copy of its on-disk format (`prune4rel_jax/testing.py`; photo-sized
JPEGs for the 224-px datasets) in a temporary folder — or takes the real Fashion-MNIST from the Debian package —
builds it with its tfds builder, loads it as training does, and times `pipeline.train_stream` over the training
set: record reads, decoding (224-px datasets) and the weak view (crop + flip, as `data.*` of the dataset's config
says), then the same with SOP+'s strong view (`image_strong`) added. Prints a Markdown table; the build (+ load)
time and the wait for the first batch (worker start-up, once per phase in training) are reported apart.
"""

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prune4rel_jax import testing  # noqa: E402
from prune4rel_jax.config import default_config  # noqa: E402
from prune4rel_jax.data import fashion_mnist, load_dataset, pipeline  # noqa: E402
from prune4rel_jax.data.augment import make_view  # noqa: E402

PHOTO_SIDES = (300, 500)  # ImageNet's typical photos are about 400×350

# name → (writer of a fake copy, data fields of its config)
DATASETS = {
    "cifar10": (lambda d: testing.write_cifar10(d, train_per_batch=1000), {"noise_type": "sym", "noise_rate": 0.4}),
    "cifar100": (lambda d: testing.write_cifar100(d, train=5000), {"noise_type": "sym", "noise_rate": 0.4}),
    "fashion_mnist": (None, {"noise_type": "sym", "noise_rate": 0.4, "crop_padding": 2}),
    "webvision": (lambda d: testing.write_webvision(d, per_class=8, classes=50, sides=PHOTO_SIDES),
                  {"noise_type": "clean", "image_size": 224}),
    "clothing1m": (lambda d: testing.write_clothing1m(d, train=400, sides=PHOTO_SIDES),
                   {"noise_type": "clean", "image_size": 224}),
    "imagenet": (lambda d: testing.write_imagenet(d, classes=20, train_per_class=20, sides=PHOTO_SIDES),
                 {"noise_type": "sym", "noise_rate": 0.2, "image_size": 224}),
}


def strong_view(cfg, dataset):
  try:
    return make_view("image_strong", cfg, dataset.mean)
  except ValueError:  # a package without the strong view
    return None


def time_stream(dataset, views, batch: int, steps: int, loading: pipeline.Loading) -> tuple[float, float]:
  """(seconds to the first batch, images/s over the next `steps` batches)."""
  start = time.perf_counter()
  stream = pipeline.train_stream(dataset.train_images, dataset.train_labels, np.arange(dataset.num_train),
                                 batch_size=batch, seed=0, views=views, start_step=0, num_steps=steps + 1,
                                 loading=loading)
  next(stream)
  first = time.perf_counter() - start
  start = time.perf_counter()
  count = sum(1 for _ in stream)
  return first, count * batch / (time.perf_counter() - start)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--datasets", default=",".join(DATASETS))
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--read-threads", type=int, default=1, help="grain read threads per process (loading.read_threads)")
  p.add_argument("--workers", type=int, default=0, help="grain worker processes (loading.workers)")
  args = p.parse_args()
  loading = pipeline.Loading(workers=args.workers, read_threads=args.read_threads)
  print(f"{os.cpu_count()} CPUs; batch {args.batch}, {args.steps} timed steps, {loading}; load average "
        f"{os.getloadavg()[0]:.2f}\n")
  print("| dataset | files | train images | stored shape | build + load s | img/s, weak view | img/s, weak + strong "
        "| first batch s, weak / weak + strong |")
  print("|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.datasets.split(","):
      write, fields = DATASETS[name]
      cfg = default_config().data
      cfg.update({"name": name, "tfds_dir": os.path.join(tmp, "tfds"), **fields})
      if write is None:
        if not os.path.isdir(fashion_mnist.DEBIAN_DIR):
          print(f"| {name} | real: not installed (apt-get install dataset-fashion-mnist) | | | | | |")
          continue
        files = "real (Debian)"
      else:
        cfg.dir = os.path.join(tmp, name)
        write(cfg.dir)
        files = "fake"
      start = time.perf_counter()
      with contextlib.redirect_stdout(io.StringIO()):  # tfds's build messages
        dataset = load_dataset(cfg)
      build = time.perf_counter() - start
      weak = {"image": make_view("image", cfg)}
      timings = [time_stream(dataset, weak, args.batch, args.steps, loading)]
      strong = strong_view(cfg, dataset)
      if strong is not None:
        timings.append(time_stream(dataset, {**weak, "image_strong": strong}, args.batch, args.steps, loading))
      rates = " | ".join(f"{rate:.0f}" for _, rate in timings) + (" | –" if strong is None else "")
      firsts = " / ".join(f"{first:.1f}" for first, _ in timings)
      print(f"| {name} | {files} | {dataset.num_train} | {dataset.image_shape} | {build:.1f} | {rates} | {firsts} |",
            flush=True)


if __name__ == "__main__":
  main()
