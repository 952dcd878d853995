"""Command line: `prune4rel --config configs/quickstart.py [--config.selection.fraction=0.4] [--workdir DIR]`.

Kept short on purpose: everything happens in `train.train_and_evaluate`. Bad input (`UserError`, an unknown or
mistyped config field) ends with one `error:` line and exit status 2.
"""

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from prune4rel_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default: runs/<dataset>-<method>-<learner>-<time>)")


def default_workdir(config) -> str:
  stamp = time.strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{config.data.name}-{config.selection.name}-{config.learner.name}"
                              f"-f{config.selection.fraction}-{stamp}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from prune4rel_jax.train import train_and_evaluate  # imported after flag parsing: JAX starts here

  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config)
  try:
    summary = train_and_evaluate(config, workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary, indent=2))
  print(f"clean test accuracy: {summary['test_accuracy']:.4f}  (run directory: {workdir})")


def run():
  if not any(a == "--config" or a.startswith("--config=") for a in sys.argv[1:]):
    print("error: --config is required, e.g. --config configs/quickstart.py", file=sys.stderr)
    sys.exit(2)
  app.run(main)
