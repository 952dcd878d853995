"""Checkpoints and the run directory's resume rules: orbax `CheckpointManager`s behind a small interface.

A checkpoint holds everything the rest of a run depends on:
  state   the learner state of the training phase (an opaque pytree: networks, BN statistics, optimiser,
          per-example variables), restored with the placement of a freshly initialised state;
  arrays  the selected indices, the warm-up records they were chosen from (`SelectionInputs`) and the phase's
          RNG key;
  meta    JSON: the phase, the number of completed epochs, the epoch records logged so far and timings.
The data stream is a pure function of (seed, step) (`pipeline.train_stream`) and every step key is
`fold_in(key, step)`, so these pin the rest of the run: a resumed run ends bit-identical to an uninterrupted one.

Checkpoint numbers are save points, not optimiser steps: 0 is the selection (fresh state, epoch 0), n the end of
training epoch n. The warm-up before selection has its own save points under `checkpoints/warmup` (the warm-up
network, the forgetting counters and the records of finished warm-up runs), removed once selection is saved.
Saves are asynchronous (orbax copies the arrays to host memory before `save` returns, so the next step may donate
them) and collective over processes; orbax commits a checkpoint by renaming its temporary directory, so a save cut
short by a kill is never listed, and a damaged committed one is set aside on restore. A checkpoint whose state has
other arrays than the code builds (a renamed layer) is refused with an error, neither restored nor set aside.
`WarmupCache` keeps finished warm-up networks that several runs share (a sweep's cells).
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from prune4rel_jax.errors import UserError
from prune4rel_jax.learners import LEARNERS
from prune4rel_jax.reporting import atomic_write
from prune4rel_jax.selection import SelectionInputs

SUBDIR = "checkpoints"
WARMUP_SUBDIR = "warmup"
# Files a run writes into its directory (reporting.RunWriter); `--overwrite` removes exactly these.
RUN_FILES = ("config.json", "metrics.jsonl", "selected_indices.npy", "summary.json", "curves.png", "selection.png")
# Config sections that do not change results: a run may resume with different values.
NOT_COMPARED = ("checkpoint", "loading")


@dataclasses.dataclass
class WarmupSnapshot:
  """A restored warm-up save point: run `run` has finished `epoch` of its epochs."""
  run: int
  epoch: int
  state: Any                  # {"learner": learner state[, "forgetting": the forgetting counters]}
  finished_runs: list[dict[str, np.ndarray]]  # the records of runs 0 … run-1
  records: list[dict]         # the epoch log so far


@dataclasses.dataclass
class Snapshot:
  """A restored checkpoint."""
  epoch: int                  # completed training epochs (= the checkpoint's number)
  state: Any
  selected: np.ndarray
  inputs: SelectionInputs
  key: jax.Array
  meta: dict                  # records (epoch log so far), selection_seconds, train_seconds


class Checkpoints:
  """Save points of one run under `workdir/checkpoints`, keeping the newest `cfg.keep` (`config.checkpoint`)."""

  def __init__(self, workdir: str, cfg):
    self.cfg = cfg
    self.directory = os.path.abspath(os.path.join(workdir, SUBDIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, create=True, cleanup_tmp_directories=True,
                                           enable_async_checkpointing=cfg.async_save)
    self.manager, self.warmup = (
        ocp.CheckpointManager(directory, options=options, item_handlers={  # handlers: item_metadata reads them
            "state": ocp.StandardCheckpointHandler(), "arrays": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()})
        for directory in (self.directory, os.path.join(self.directory, WARMUP_SUBDIR)))

  def due(self, epoch: int, epochs: int) -> bool:
    """Whether to save after (0-based) `epoch`: every `every_epochs` and at the end of the phase."""
    return epoch + 1 == epochs or (self.cfg.every_epochs > 0 and (epoch + 1) % self.cfg.every_epochs == 0)

  def save(self, epoch: int, state, selected: np.ndarray, inputs: SelectionInputs, key: jax.Array,
           meta: dict) -> None:
    arrays = {"selected": np.asarray(selected, np.int64), "key": np.asarray(jax.random.key_data(key)),
              **{f"inputs.{k}": np.asarray(v) for k, v in _array_fields(inputs).items()}}
    meta = {**meta, "epoch": epoch, "num_classes": inputs.num_classes}
    self.manager.save(epoch, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))

  def save_warmup(self, run: int, epoch: int, epochs_per_run: int, state, finished_runs: list[dict],
                  records: list[dict]) -> None:
    """A warm-up save point after `epoch` epochs of warm-up run `run` (numbered `run·(epochs_per_run+1)+epoch`)."""
    arrays = {"finished_runs": np.asarray(len(finished_runs)),  # never an empty item, which orbax refuses
              **{f"run{i}.{k}": np.asarray(v) for i, record in enumerate(finished_runs) for k, v in record.items()}}
    meta = {"run": run, "epoch": epoch, "records": records}
    self.warmup.save(run * (epochs_per_run + 1) + epoch, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))

  def restore_warmup(self, fresh_state: Callable[[], Any]) -> WarmupSnapshot | None:
    """The newest warm-up save point that restores completely (damaged ones are set aside), or None."""
    for step in sorted(self.warmup.all_steps(), reverse=True):
      try:
        return self._restore_warmup(step, fresh_state)
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001  (as `restore_latest`)
        print(f"warm-up checkpoint {step} is damaged ({type(e).__name__}); trying an older one", flush=True)
        self._set_aside(step, self.warmup)
    return None

  def _restore_warmup(self, step: int, fresh_state: Callable[[], Any]) -> WarmupSnapshot:
    restored = self.warmup.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(),
                                                                 meta=ocp.args.JsonRestore()))
    arrays = dict(restored.arrays)
    finished = [{} for _ in range(int(arrays.pop("finished_runs")))]
    for name, value in arrays.items():
      run, field = name.split(".", 1)
      finished[int(run.removeprefix("run"))][field] = np.asarray(value)
    target = _abstract(fresh_state())
    _check_structure(self.warmup, step, target)
    state = self.warmup.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    return WarmupSnapshot(run=restored.meta["run"], epoch=restored.meta["epoch"], state=state,
                          finished_runs=finished, records=restored.meta["records"])

  def finish_warmup(self) -> None:
    """Drop the warm-up save points once the selection's checkpoint 0 is on disk (they are superseded)."""
    self.manager.wait_until_finished()
    self.warmup.wait_until_finished()
    if jax.process_index() == 0:
      shutil.rmtree(os.path.join(self.directory, WARMUP_SUBDIR), ignore_errors=True)
    _barrier("finish_warmup")
    self.warmup.reload()

  def restore_latest(self, fresh_state: Callable[[int], Any]) -> Snapshot | None:
    """The newest checkpoint that restores completely, or None. `fresh_state(num_selected)` gives a state of the
    right structure and placement. A checkpoint that fails to restore (truncated or missing files) is moved
    aside to `checkpoints/damaged_<n>` and the previous one is tried."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self._restore(step, fresh_state)
      except UserError:
        raise
      except Exception as e:  # orbax/tensorstore raise many types for damaged files  # noqa: BLE001
        print(f"checkpoint {step} in {self.directory} is damaged ({type(e).__name__}: "
              f"{' '.join(str(e).split())[:200]}); trying an older one", flush=True)
        self._set_aside(step)
    return None

  def restore_inputs(self) -> SelectionInputs | None:
    """The warm-up's `SelectionInputs` from the newest checkpoint, without the network (None if there is none):
    what `prune4rel-select` re-selects from."""
    steps = self.manager.all_steps()
    return self._restore_arrays(max(steps))[0] if steps else None

  def _restore_arrays(self, step: int) -> tuple[SelectionInputs, dict, dict]:
    restored = self.manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    arrays = {k: np.asarray(v) for k, v in restored.arrays.items()}
    inputs = SelectionInputs(num_classes=restored.meta["num_classes"],
                             **{k.removeprefix("inputs."): v for k, v in arrays.items() if k.startswith("inputs.")})
    return inputs, arrays, restored.meta

  def _restore(self, step: int, fresh_state: Callable[[int], Any]) -> Snapshot:
    inputs, arrays, meta = self._restore_arrays(step)
    target = _abstract(fresh_state(len(arrays["selected"])))
    _check_structure(self.manager, step, target)
    state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    return Snapshot(epoch=meta["epoch"], state=state, selected=arrays["selected"], inputs=inputs,
                    key=jax.random.wrap_key_data(arrays["key"]), meta=meta)

  def _set_aside(self, step: int, manager: ocp.CheckpointManager | None = None) -> None:
    manager = manager or self.manager
    if jax.process_index() == 0:
      directory = str(manager.directory)
      os.replace(os.path.join(directory, str(step)), os.path.join(directory, f"damaged_{step}"))
    _barrier(f"set_aside_{step}")
    manager.reload()

  def close(self) -> None:
    """Wait for pending asynchronous saves."""
    for manager in (self.manager, self.warmup):
      manager.wait_until_finished()
      manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class WarmupCache:
  """Finished warm-up runs shared by every run with the same warm-up (`warmup_identity`), e.g. the cells of a sweep
  that differ only in selection method or fraction: the first one trains warm-up run r and stores its network (and
  forgetting counters), the others restore it instead of training the same network again. Run r lives in
  `root/<identity>/run<r>` (orbax) next to `run<r>.json` (its epoch records, written last: the entry is complete).

  `claim(run)` serialises processes that share a cache (a sweep's `--jobs` workers) with a file lock, so one of
  them trains a run while the others wait for it instead of training it again. Single-process runs only."""

  POLL_SECONDS = 2.0

  def __init__(self, root: str, config):
    if jax.process_count() > 1:
      raise UserError("a shared warm-up cache needs a single-process run; leave the warm-up cache out on "
                      "multi-host runs")
    identity = warmup_identity(config)
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    self.directory = os.path.abspath(os.path.join(
        root, f"{config.data.name}-{config.learner.name}-s{config.seed}-{digest}"))
    os.makedirs(self.directory, exist_ok=True)
    if not os.path.exists(os.path.join(self.directory, "identity.json")):  # for people; the digest is the key
      with open(os.path.join(self.directory, "identity.json"), "w") as f:
        json.dump(identity, f, indent=2, sort_keys=True)

  def _path(self, run: int) -> str:
    return os.path.join(self.directory, f"run{run}")

  def load(self, run: int, fresh_state: Callable[[], Any]) -> tuple[Any, list[dict]] | None:
    """(state, epoch records) of warm-up run `run`, or None if it is not stored (yet)."""
    if not os.path.exists(self._path(run) + ".json"):
      return None
    with open(self._path(run) + ".json") as f:
      records = json.load(f)
    with ocp.StandardCheckpointer() as checkpointer:
      state = checkpointer.restore(self._path(run), _abstract(fresh_state()))
    return state, records

  def store(self, run: int, state, records: list[dict]) -> None:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(self._path(run), state, force=True)
      checkpointer.wait_until_finished()
    with atomic_write(self._path(run) + ".json") as f:
      json.dump(records, f)

  @contextlib.contextmanager
  def claim(self, run: int, stop: "StopOnSigterm"):
    """Hold warm-up run `run`'s lock: wait while another process holds it (it is training that run). The lock is
    an flock, so the system releases it when its holder dies, however it dies."""
    with open(self._path(run) + ".lock", "a") as lock:
      announced = False
      while True:
        try:
          fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
          break
        except BlockingIOError:
          if stop.requested():
            raise Preempted(f"stopped while waiting for warm-up run {run + 1} in {self.directory}; rerun the same "
                            f"command to resume") from None
          if not announced:
            print(f"waiting for warm-up run {run + 1}, being trained by another process ({lock.name})", flush=True)
            announced = True
          time.sleep(self.POLL_SECONDS)
      try:
        yield
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def warmup_identity(config) -> dict:
  """What a warm-up network depends on: the whole config but the selection method (only its warm-up epochs count),
  the other learners' sections, the hyperparameters of this learner that its warm-up does not read
  (`Learner.warmup_hyperparameters`) and the sections that do not change results."""
  identity = _comparable(json.loads(config.to_json_best_effort()))
  name = config.learner.name
  section, read = identity["learner"][name], LEARNERS.get(name).warmup_hyperparameters
  identity["learner"] = {"name": name, name: section if read is None else {k: section[k] for k in read}}
  identity["selection"] = {"warmup_epochs": config.selection.warmup_epochs}
  return identity


def _abstract(state):
  """Shapes, dtypes and placement of `state`: the restore target, so restored arrays land where fresh ones do."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _leaves(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{path: shape} of `tree`'s arrays, the path as plain names (a restored metadata tree has dicts and lists where
  the state has dataclasses and tuples)."""
  def name(key) -> str:
    return str(next((getattr(key, a) for a in ("key", "name", "idx") if hasattr(key, a)), key))
  return {tuple(map(name, path)): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_structure(manager: ocp.CheckpointManager, step: int, target) -> None:
  """A checkpoint whose state has other arrays than this run's is not damaged: the code that wrote it built another
  model or learner state (renamed layers, say). Restoring it would fail, or worse, fill arrays by position; setting
  it aside as damaged would silently start afresh. Say so instead."""
  stored, wanted = _leaves(manager.item_metadata(step).state), _leaves(target)
  if stored != wanted:
    differ = sorted(set(stored.items()) ^ set(wanted.items()))[0][0]
    raise UserError(f"checkpoint {step} in {manager.directory} holds a state of another structure than this code "
                    f"builds (first difference at {'/'.join(differ)}): it was written by another version of the "
                    f"model or learner. Run it with that version, or start afresh (--overwrite, or delete the "
                    f"directory)")


def _array_fields(inputs: SelectionInputs) -> dict[str, np.ndarray]:
  return {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)
          if isinstance(getattr(inputs, f.name), np.ndarray)}


# ---- the run directory ------------------------------------------------------------------------------------------
def prepare_run_dir(workdir: str, config, existing: str = "auto") -> None:
  """Decide what to do with a run directory that already holds a run. `existing`:
    auto       resume if the stored config equals this one (outside `NOT_COMPARED`), refuse otherwise;
    resume     resume whatever the stored config;
    overwrite  delete the previous run's files and checkpoints and start afresh.
  A stale `summary.json` is always removed first, so a result on disk is always the result of this config."""
  if existing not in ("auto", "resume", "overwrite"):
    raise ValueError(f"existing={existing!r}; expected auto, resume or overwrite")
  stored_path = os.path.join(workdir, "config.json")
  if existing == "overwrite":
    if jax.process_index() == 0:
      for name in RUN_FILES:
        if os.path.exists(os.path.join(workdir, name)):
          os.remove(os.path.join(workdir, name))
      shutil.rmtree(os.path.join(workdir, SUBDIR), ignore_errors=True)
  elif existing == "auto" and os.path.exists(stored_path):
    with open(stored_path) as f:
      stored = json.load(f)
    current = json.loads(config.to_json_best_effort())
    changed = _differences(_comparable(stored), _comparable(current))
    if changed:
      shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
      raise UserError(f"run directory {workdir} holds a run with a different config ({shown}); pass --resume to "
                      f"continue it with this config, --overwrite to start afresh, or choose another --workdir")
  if jax.process_index() == 0 and os.path.exists(os.path.join(workdir, "summary.json")):
    os.remove(os.path.join(workdir, "summary.json"))
  _barrier("prepare_run_dir")


def _comparable(config: dict) -> dict:
  return {k: v for k, v in config.items() if k not in NOT_COMPARED}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
  """Dotted names of the fields that differ, with both values."""
  changed = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      changed += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return changed


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# ---- preemption ---------------------------------------------------------------------------------------------
class Preempted(Exception):
  """SIGTERM arrived; the run saved a checkpoint and stopped. Rerunning the same command resumes it."""


class StopOnSigterm:
  """Turns SIGTERM (what SLURM and cloud preemption send first) into a flag that the epoch loop reads, so the
  run saves a checkpoint at the end of the current epoch and exits instead of dying mid-way. Signal handlers
  can only be installed from the main thread; elsewhere this is inert."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del signum, frame
    print("SIGTERM: saving a checkpoint at the end of this epoch, then stopping", flush=True)
    self.received = True

  def requested(self) -> bool:
    """True on every process as soon as any process received SIGTERM (all must save and stop together)."""
    if jax.process_count() == 1:
      return self.received
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.received))))
