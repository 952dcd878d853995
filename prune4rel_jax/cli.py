"""What the command-line tools share: the `--config` flag and flag parsing that turns bad input into one line.

`prune4rel` (main.py), `python -m prune4rel_jax.sweep` and `python -m prune4rel_jax.crosscheck` all take
`--config FILE[:ARG]` plus `--config.<field>=<value>` overrides; an unknown field, a mistyped value or a missing
file ends with one `error:` line and exit status 2, not a traceback.
"""

import sys

from absl import flags, logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py[:arg])",
                                         lock_config=True)


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors. config_flags loads the file lazily and reports an unknown field
  as a bare AttributeError (with a "did you mean" hint), a bad value as a flags.Error. Sets absl logging to
  WARNING unless --verbosity is given."""
  if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    fail("--config is required, e.g. --config configs/quickstart.py")
  try:
    rest = parse_plain_flags(argv)  # applies the overrides: an unknown field fails here
    CONFIG.value.keys()  # the file loads lazily: load it now, not deep inside the run
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], BaseException):  # ConfigDict wraps a KeyError in an AttributeError
      e = e.args[0]
    fail(f"unknown config field {' '.join(str(e.args[0] if e.args else e).split())}")
  except OSError as e:
    fail(" ".join(str(e).split()))
  return rest


def parse_plain_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a one-line error for a bad flag, for commands with or without --config. Sets absl
  logging to WARNING unless --verbosity is given (orbax logs every save step, JAX its backend search, at INFO)."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  return rest
