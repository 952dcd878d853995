"""The pipeline: noisy labels → warm-up → selection → re-training on the subset → clean test accuracy.

`train_and_evaluate(config, workdir)` is the single entry point (the CLI, the tests and notebooks call it).
"""

import time

import jax
import numpy as np

from prune4rel_jax import evaluate, optim, parallel
from prune4rel_jax.config import validate
from prune4rel_jax.data import Dataset, load_dataset, pipeline
from prune4rel_jax.data.augment import make_view
from prune4rel_jax.errors import UserError
from prune4rel_jax.learners import LEARNERS, Learner
from prune4rel_jax.models import create_model
from prune4rel_jax.reporting import RunWriter
from prune4rel_jax.selection import METHODS, SelectionInputs, budget_for


def train_learner(config, learner: Learner, state, dataset: Dataset, indices: np.ndarray, epochs: int,
                  key: jax.Array, phase: str, writer: RunWriter, evaluate_test: bool):
  """Train `learner` on `dataset.train_*[indices]` for `epochs` epochs; logs one record per epoch."""
  views = {name: make_view(name, config.data) for name in learner.views}
  seed = int(jax.random.randint(jax.random.fold_in(key, 0), (), 0, 2**31 - 1))
  for epoch in range(epochs):
    start = time.perf_counter()
    lr = optim.learning_rate(config.optim, epoch, config.epochs)
    data = pipeline.EpochData(dataset.train_images, dataset.train_labels, indices, config.batch_size, seed,
                              epoch, views, desc=f"{phase} epoch {epoch + 1}/{epochs}")
    state, metrics = learner.train_epoch(state, data, lr, key)
    record = {"phase": phase, "epoch": epoch, "lr": lr, **metrics}
    if evaluate_test and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == epochs):
      record["test_accuracy"] = evaluate.accuracy(learner, state, dataset.test_images, dataset.test_labels,
                                                  config.eval_batch_size)
    if not np.isfinite(record.get("loss", 0.0)):
      raise UserError(f"{phase} epoch {epoch + 1}: the loss is {record['loss']}; lower optim.lr or check the data")
    record["seconds"] = time.perf_counter() - start
    writer.log(record)
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
          flush=True)
  return state


def warm_up(config, dataset: Dataset, model, mesh, method, key: jax.Array, writer: RunWriter) -> SelectionInputs:
  """Train the learner on the full noisy set for `selection.warmup_epochs`, then record what `method` needs."""
  learner = LEARNERS.get(config.learner.name)(config, model, dataset.num_classes, mesh)
  everything = np.arange(dataset.num_train)
  state = learner.init(jax.random.fold_in(key, 1), dataset.image_shape, dataset.num_train)
  state = train_learner(config, learner, state, dataset, everything, config.selection.warmup_epochs, key,
                        "warmup", writer, evaluate_test=False)
  view = None if method.view == "test" else make_view(method.view, config.data)
  records = evaluate.predict_dataset(learner, state, dataset.train_images, everything, config.eval_batch_size,
                                     view, seed=config.seed)
  return SelectionInputs(labels=dataset.train_labels, num_classes=dataset.num_classes,
                         logits=records["logits"], features=records["features"])


def train_and_evaluate(config, workdir: str) -> dict:
  validate(config)
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh, "batch_size")
  parallel.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
  dataset = load_dataset(config.data)
  model = create_model(config.model, dataset.num_classes, dataset.mean, dataset.std)
  method = METHODS.get(config.selection.name)(config.selection, mesh, config.seed)
  budget = budget_for(config.selection.fraction, dataset.num_train)
  writer = RunWriter(workdir, config)
  warmup_key, train_key = jax.random.split(jax.random.key(config.seed))

  start = time.perf_counter()
  if method.needs:
    inputs = warm_up(config, dataset, model, mesh, method, warmup_key, writer)
  else:
    inputs = SelectionInputs(labels=dataset.train_labels, num_classes=dataset.num_classes)
  selected = np.asarray(method.select(inputs, budget), np.int64)
  selection_seconds = time.perf_counter() - start
  if len(selected) != budget or len(np.unique(selected)) != budget:
    raise RuntimeError(f"{method.name} returned {len(selected)} indices ({len(np.unique(selected))} distinct) "
                       f"for a budget of {budget}")
  writer.save_selection(selected)

  # Fresh networks (and per-example state) for the subset: nothing carries over from the warm-up.
  start = time.perf_counter()
  learner = LEARNERS.get(config.learner.name)(config, model, dataset.num_classes, mesh)
  state = learner.init(train_key, dataset.image_shape, len(selected))
  state = train_learner(config, learner, state, dataset, selected, config.epochs, train_key, "train", writer,
                        evaluate_test=True)
  train_seconds = time.perf_counter() - start

  tested = [r["test_accuracy"] for r in writer.records if r["phase"] == "train" and "test_accuracy" in r]
  noisy = dataset.noisy_mask()
  summary = {
      "dataset": dataset.name, "learner": config.learner.name, "selection": method.name,
      "fraction": config.selection.fraction, "num_train": dataset.num_train, "subset_size": int(budget),
      "noise_type": config.data.noise_type, "noise_rate_full": None if noisy is None else float(noisy.mean()),
      "noisy_share_of_subset": None if noisy is None else float(noisy[selected].mean()),
      "test_accuracy": tested[-1] if tested else None, "best_test_accuracy": max(tested) if tested else None,
      "selection_seconds": selection_seconds, "train_seconds": train_seconds,
      "num_devices": int(mesh.devices.size), "seed": config.seed,
  }
  writer.finish(summary)
  return summary
