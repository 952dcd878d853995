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
    _fail(str(e))
  print(json.dumps(summary, indent=2))
  print(f"clean test accuracy: {summary['test_accuracy']:.4f}  (run directory: {workdir})")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors. config_flags loads the file lazily and reports an unknown field
  as a bare AttributeError (with a "did you mean" hint), a bad value as a flags.Error."""
  if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    _fail("--config is required, e.g. --config configs/quickstart.py")
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # the file loads lazily: load it now, not deep inside the run
    return rest
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], BaseException):  # ConfigDict wraps a KeyError in an AttributeError
      e = e.args[0]
    _fail(f"unknown config field {' '.join(str(e.args[0] if e.args else e).split())}")
  except OSError as e:
    _fail(" ".join(str(e).split()))


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run():
  app.run(main, flags_parser=parse_flags)
