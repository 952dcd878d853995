"""The pipeline: noisy labels → warm-up → selection → re-training on the subset → clean test accuracy.

`train_and_evaluate(config, workdir)` is the single entry point (the CLI, the tests and notebooks call it).
"""

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from prune4rel_jax import checkpoint, evaluate, optim, parallel
from prune4rel_jax.config import validate
from prune4rel_jax.data import Dataset, load_dataset, pipeline
from prune4rel_jax.data.augment import make_view
from prune4rel_jax.errors import UserError
from prune4rel_jax.learners import LEARNERS, Learner
from prune4rel_jax.models import create_model
from prune4rel_jax.reporting import RunWriter
from prune4rel_jax.selection import METHODS, SelectionInputs, budget_for, records


# What a checkpoint carries from the selection to the summary, besides the network: timings and diagnostics.
CARRIED = ("selection_seconds", "train_seconds", "selection_diagnostics")


def train_learner(config, learner: Learner, state, dataset: Dataset, indices: np.ndarray, epochs: int,
                  key: jax.Array, phase: str, writer: RunWriter, evaluate_test: bool, start_epoch: int = 0,
                  after_epoch: Callable[[int, Any], None] | None = None,
                  on_step: Callable[[dict[str, jax.Array]], None] | None = None):
  """Train `learner` on `dataset.train_*[indices]` for epochs `start_epoch … epochs-1`; logs one record per
  epoch, then calls `after_epoch(epoch, state)` (checkpointing). `on_step` receives every step's per-example
  outputs (warm-up recorders)."""
  views = {name: make_view(name, config.data, dataset.mean) for name in learner.views}
  seed = int(jax.random.randint(jax.random.fold_in(key, 0), (), 0, 2**31 - 1))
  with pipeline.OpenStreams(epochs, pipeline.Loading(**config.loading)) as streams:
    for epoch in range(start_epoch, epochs):
      start = time.perf_counter()
      lr = optim.learning_rate(config.optim, epoch, config.epochs)
      data = pipeline.EpochData(dataset.train_images, dataset.train_labels, indices, config.batch_size, seed,
                                epoch, views, desc=f"{phase} epoch {epoch + 1}/{epochs}", phase=phase,
                                streams=streams)
      state, metrics = learner.train_epoch(state, data, lr, key, on_step)
      streams.finish_epoch()
      record = {"phase": phase, "epoch": epoch, "lr": lr, **metrics}
      if evaluate_test and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == epochs):
        record["test_accuracy"] = evaluate.accuracy(learner, state, dataset.test_images, dataset.test_labels,
                                                    config.eval_batch_size, make_view("test", config.data))
      if not np.isfinite(record.get("loss", 0.0)):
        raise UserError(f"{phase} epoch {epoch + 1}: the loss is {record['loss']}; lower optim.lr or check the data")
      record["seconds"] = time.perf_counter() - start
      writer.log(record)
      print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
            flush=True)
      if after_epoch is not None:
        after_epoch(epoch, state)
  return state


def warm_up(config, dataset: Dataset, model, mesh, method, key: jax.Array, writer: RunWriter,
            checkpoints: checkpoint.Checkpoints, stop: checkpoint.StopOnSigterm,
            cache: checkpoint.WarmupCache | None = None) -> SelectionInputs:
  """Train the learner on the full noisy set for `selection.warmup_epochs` (`method.warmup_runs` times, each from
  a fresh initialisation), then record only the `SelectionInputs` fields `method` needs. Saves warm-up checkpoints
  as training does and resumes from the newest one. With a `cache`, a warm-up run another run has already trained
  is restored from it, and a run trained here is stored in it (with its forgetting counters, which any method
  sharing the cache may need)."""
  learner = LEARNERS.get(config.learner.name)(config, model, dataset.num_classes, mesh)
  everything = np.arange(dataset.num_train)
  view = make_view(method.view, config.data, dataset.mean)
  epochs = config.selection.warmup_epochs
  counts_forgetting = "forgetting_events" in method.needs or cache is not None

  def fresh_run(run: int):
    forgetting = records.ForgettingRecorder(dataset.num_train, mesh) if counts_forgetting else None
    state = learner.init(jax.random.fold_in(jax.random.fold_in(key, run), 1), dataset.image_shape,
                         dataset.num_train)
    return state, forgetting

  def checkpointed(state, forgetting):
    return {"learner": state} if forgetting is None else {"learner": state, "forgetting": forgetting.state}

  snapshot = checkpoints.restore_warmup(lambda: checkpointed(*fresh_run(0)))
  runs, first_run = [], 0
  if snapshot is not None:
    print(f"resuming the warm-up from run {snapshot.run + 1}, epoch {snapshot.epoch}/{epochs}", flush=True)
    runs, first_run = snapshot.finished_runs, snapshot.run
    writer.restore(snapshot.records)

  def train_run(run: int):
    state, forgetting = fresh_run(run)
    start_epoch = 0
    if snapshot is not None and run == snapshot.run:
      state, start_epoch = snapshot.state["learner"], snapshot.epoch
      if forgetting is not None:
        forgetting.state = snapshot.state["forgetting"]

    def after_epoch(epoch: int, state) -> None:
      stopping = stop.requested()
      if stopping or checkpoints.due(epoch, epochs):
        checkpoints.save_warmup(run, epoch + 1, epochs, checkpointed(state, forgetting), runs, writer.records)
      if stopping:
        raise checkpoint.Preempted(f"stopped after warm-up epoch {epoch + 1}/{epochs} of run {run + 1}; rerun the "
                                   f"same command to resume")

    state = train_learner(config, learner, state, dataset, everything, epochs, jax.random.fold_in(key, run),
                          "warmup", writer, evaluate_test=False, start_epoch=start_epoch, after_epoch=after_epoch,
                          on_step=forgetting)
    return state, forgetting

  def shared_run(run: int):
    with cache.claim(run, stop):
      stored = cache.load(run, lambda: checkpointed(*fresh_run(run)))
      if stored is None:
        state, forgetting = train_run(run)
        cache.store(run, checkpointed(state, forgetting), writer.records[-epochs:])
        return state, forgetting
    print(f"warm-up run {run + 1} restored from {cache.directory}", flush=True)
    saved, epoch_records = stored
    if snapshot is not None and run == snapshot.run:  # this run's epochs before a kill are in the log already
      writer.restore(writer.records[:len(writer.records) - snapshot.epoch])
    for record in epoch_records:
      writer.log(record)
    forgetting = records.ForgettingRecorder(dataset.num_train, mesh)
    forgetting.state = saved["forgetting"]
    return saved["learner"], forgetting

  for run in range(first_run, method.warmup_runs):
    state, forgetting = train_run(run) if cache is None else shared_run(run)
    predictions = None
    if method.needs & records.PREDICTION_FIELDS:
      predictions = evaluate.predict_dataset(learner, state, dataset.train_images, everything,
                                             config.eval_batch_size, view, seed=config.seed)
    network = records.Network(learner.predict, state, dataset.train_images, dataset.std, config.eval_batch_size)
    runs.append({**records.record_run(method.needs, dataset.train_labels, mesh, predictions, forgetting),
                 **method.record_network(network)})
  return SelectionInputs(labels=dataset.train_labels, num_classes=dataset.num_classes, **records.combine_runs(runs))


def train_and_evaluate(config, workdir: str, existing: str = "auto", warmup_cache: str | None = None) -> dict:
  """The whole pipeline; resumes from the newest checkpoint in `workdir` if there is one. `existing` says what to
  do with a run already in `workdir`: auto | resume | overwrite (`checkpoint.prepare_run_dir`). `warmup_cache`:
  a directory of warm-up networks shared with other runs (`checkpoint.WarmupCache`)."""
  validate(config)
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh, "batch_size")
  parallel.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
  dataset = load_dataset(config.data)
  model = create_model(config.model, dataset.num_classes, dataset.mean, dataset.std)
  method = METHODS.get(config.selection.name)(config.selection, mesh, config.seed)
  budget = budget_for(config.selection.fraction, dataset.num_train)
  if config.selection.balance and budget < dataset.num_classes:
    raise UserError(f"selection.fraction={config.selection.fraction} keeps {budget} of {dataset.num_train} "
                    f"examples, fewer than the {dataset.num_classes} classes selection.balance=True gives a quota "
                    f"each; raise selection.fraction or set selection.balance=False")
  # Fresh networks (and per-example state) for the subset: nothing carries over from the warm-up. Built here, as
  # it validates the learner's hyperparameters.
  learner = LEARNERS.get(config.learner.name)(config, model, dataset.num_classes, mesh)
  cache = checkpoint.WarmupCache(warmup_cache, config) if warmup_cache and method.needs else None
  checkpoint.prepare_run_dir(workdir, config, existing)  # nothing above writes to workdir: bad input leaves it as is
  writer = RunWriter(workdir, config)
  warmup_key, train_key = jax.random.split(jax.random.key(config.seed))

  with checkpoint.Checkpoints(workdir, config.checkpoint) as checkpoints, checkpoint.StopOnSigterm() as stop:
    snapshot = checkpoints.restore_latest(lambda n: learner.init(train_key, dataset.image_shape, n))
    if snapshot is None:
      start = time.perf_counter()
      if method.needs:
        inputs = warm_up(config, dataset, model, mesh, method, warmup_key, writer, checkpoints, stop, cache)
      else:
        inputs = SelectionInputs(labels=dataset.train_labels, num_classes=dataset.num_classes)
      selected, report = method.select_and_report(inputs, budget, dataset.train_clean_labels)
      selected = np.asarray(selected, np.int64)
      if len(selected) != budget or len(np.unique(selected)) != budget:
        raise RuntimeError(f"{method.name} returned {len(selected)} indices ({len(np.unique(selected))} distinct) "
                           f"for a budget of {budget}")
      carried = {"selection_seconds": time.perf_counter() - start, "train_seconds": 0.0,
                 "selection_diagnostics": writer.selection_report(report)}
      state = learner.init(train_key, dataset.image_shape, len(selected))
      checkpoints.save(0, state, selected, inputs, train_key, {**carried, "records": writer.records})
      checkpoints.finish_warmup()
      start_epoch = 0
    else:
      print(f"resuming {workdir} from checkpoint {snapshot.epoch} ({snapshot.epoch}/{config.epochs} epochs done)",
            flush=True)
      state, selected, inputs, train_key, start_epoch = (snapshot.state, snapshot.selected, snapshot.inputs,
                                                          snapshot.key, snapshot.epoch)
      writer.restore(snapshot.meta["records"])
      carried = {k: snapshot.meta.get(k) for k in CARRIED}
    writer.save_selection(selected)

    start = time.perf_counter()

    def after_epoch(epoch: int, state) -> None:
      stopping = stop.requested()
      if stopping or checkpoints.due(epoch, config.epochs):
        train_seconds = carried["train_seconds"] + time.perf_counter() - start
        checkpoints.save(epoch + 1, state, selected, inputs, train_key,
                         {**carried, "train_seconds": train_seconds, "records": writer.records})
      if stopping:
        raise checkpoint.Preempted(f"stopped after training epoch {epoch + 1}/{config.epochs} (checkpoint "
                                   f"{epoch + 1}); rerun the same command to resume")

    state = train_learner(config, learner, state, dataset, selected, config.epochs, train_key, "train", writer,
                          evaluate_test=True, start_epoch=start_epoch, after_epoch=after_epoch)
    train_seconds = carried["train_seconds"] + time.perf_counter() - start

  tested = [r["test_accuracy"] for r in writer.records if r["phase"] == "train" and "test_accuracy" in r]
  noisy = dataset.noisy_mask()
  summary = {
      "dataset": dataset.name, "learner": config.learner.name, "selection": method.name,
      "fraction": config.selection.fraction, "num_train": dataset.num_train, "subset_size": int(budget),
      "noise_type": config.data.noise_type, "noise_rate_full": None if noisy is None else float(noisy.mean()),
      "noisy_share_of_subset": None if noisy is None else float(noisy[selected].mean()),
      **evaluate.relabeling(learner, state, dataset, selected, config.eval_batch_size, make_view("test", config.data)),
      "test_accuracy": tested[-1] if tested else None, "best_test_accuracy": max(tested) if tested else None,
      "selection_diagnostics": carried["selection_diagnostics"],
      "selection_seconds": carried["selection_seconds"], "train_seconds": train_seconds,
      "num_devices": int(mesh.devices.size), "seed": config.seed,
  }
  writer.finish(summary)
  return summary
