"""Build a dataset's array_record copy ahead of training:

  python -m prune4rel_jax.data.build --config configs/imagenet.py --config.data.dir=/data/imagenet

A training run builds a missing copy itself; building first keeps that time (hours for ImageNet, whose files are
read once) out of the run and its scheduler slot. It takes the same `--config FILE[:ARG]` and overrides as
`prune4rel`, loads `config.data` as training will, and prints what it found.
"""

from absl import app, logging

from prune4rel_jax.cli import CONFIG, fail, parse_flags
from prune4rel_jax.errors import UserError


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # tfds logs every file it opens at INFO
  from prune4rel_jax.data import load_dataset

  cfg = CONFIG.value.data
  try:
    dataset = load_dataset(cfg)
  except UserError as e:
    fail(str(e))
  print(f"{dataset.name}: {dataset.num_train} training images of {dataset.image_shape}, {len(dataset.test_labels)} "
        f"test images, {dataset.num_classes} classes (copy under {cfg.tfds_dir or 'the default tfds data dir'})")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
