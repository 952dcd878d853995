"""grain input pipelines: a shuffled training stream, DivideMix's labelled/unlabelled stream and a sequential,
padded evaluation pass.

Every process computes the same global index stream (indices are cheap) and loads only its own rows of each
global batch (`parallel.process_rows`), which `parallel.to_global` then assembles into example-sharded arrays.
"""

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Mapping

import grain
import numpy as np
from absl import flags

from prune4rel_jax import parallel
from prune4rel_jax.data.augment import BatchRandom, make_view
from prune4rel_jax.errors import UserError

# A view turns this process's uint8 images into one augmented copy (e.g. weak or strong) using `BatchRandom`.
View = Callable[[np.ndarray, BatchRandom], np.ndarray]


def as_stored(images: np.ndarray, rnd: BatchRandom) -> np.ndarray:
  """The host's part of a view made on device: the images as stored (a module function: workers pickle views)."""
  del rnd
  return images


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Every example is seen once per epoch; the last batch of an epoch is completed with the next epoch's first
  examples instead of being dropped or padded (padding would corrupt BatchNorm statistics)."""
  return -(-num_examples // batch_size)


@dataclasses.dataclass(frozen=True)
class Loading:
  """How the host produces training batches (`config.loading`): the speed, never the batches. `workers` > 0 runs
  the loading and augmentation in that many grain worker processes (`mp_prefetch`), the way around the GIL for
  Python-bound views such as AutoAugment; each worker receives a pickled copy of the stream, in-memory images
  included, and takes seconds to start, which is why `OpenStreams` keeps a stream open across epochs.
  `device_views` ships the raw images under each view's name for the train step to augment on device
  (`data/device_augment.py`): the same views from other random draws."""
  workers: int = 0
  read_threads: int = 1
  prefetch: int = 2
  device_views: bool = False

  def views(self, names: tuple[str, ...], cfg, mean: tuple[float, ...]) -> dict[str, View]:
    """The host's part of each named view (`cfg` is `config.data`, `mean` the dataset's): the augmentation, or
    with `device_views` the images as stored."""
    return {name: as_stored if self.device_views else make_view(name, cfg, mean) for name in names}

  def iterate(self, dataset: grain.MapDataset) -> Iterator:
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=self.read_threads,
                                                         prefetch_buffer_size=self.prefetch))
    if not self.workers:
      return iter(iterable)
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a library or notebook caller parses none
      flags.FLAGS.mark_as_parsed()
    return _worker_deaths_named(iter(iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))))


def _worker_deaths_named(batches: Iterator) -> Iterator:
  """`batches`, with the death of a worker process (e.g. killed for memory) turned into a one-line error; closing
  this closes grain's iterator, which stops the workers."""
  try:
    yield from batches
  except RuntimeError as error:
    if "terminated unexpectedly" not in str(error):
      raise
    raise UserError(f"a data-loading worker process died ({error}); lower loading.workers (0: no workers) and "
                    f"rerun the same command to resume") from error
  finally:
    batches.close()


def train_stream(images, labels: np.ndarray, indices: np.ndarray, *, batch_size: int, seed: int,
                 views: Mapping[str, View], start_step: int, num_steps: int,
                 loading: Loading = Loading()) -> Iterator[dict[str, np.ndarray]]:
  """Batches `start_step … start_step+num_steps-1` of a seeded stream that reshuffles `indices` every epoch.

  Each batch holds this process's rows: `index` (position in the full training set), `position` (position in
  `indices`, which keys per-example learner state such as SOP's u/v), `label` (noisy) and one array per view.
  The stream is a pure function of (seed, step), so resuming at any step is exact.
  """
  indices = np.asarray(indices)
  rows = parallel.process_rows(batch_size)

  def load(positions: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return _load_rows(images, labels, indices, positions[rows], views, BatchRandom(rng, rows, batch_size))

  dataset = (grain.MapDataset.range(len(indices)).shuffle(seed=seed).repeat(None)
             .batch(batch_size, drop_remainder=True).seed(seed).random_map(load))
  return loading.iterate(dataset[start_step:start_step + num_steps])


def _load_rows(images, labels: np.ndarray, indices: np.ndarray, positions: np.ndarray,
               views: Mapping[str, View], rnd: BatchRandom) -> dict[str, np.ndarray]:
  """This process's rows of a batch: `index`, `position`, `label` and one array per view."""
  index = indices[positions]
  raw = images[index]
  batch = {"index": index.astype(np.int32), "position": positions.astype(np.int32),
           "label": labels[index].astype(np.int32)}
  for name, view in views.items():
    batch[name] = view(raw, rnd)
  return batch


def derive_seed(seed: int, *keys: int) -> int:
  """An independent stream seed for (seed, *keys), e.g. one per (epoch, network) in DivideMix."""
  return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def co_divided_stream(images, labels: np.ndarray, indices: np.ndarray, labelled: np.ndarray,
                      unlabelled: np.ndarray, *, batch_size: int, seed: int, views: Mapping[str, View],
                      loading: Loading = Loading()) -> tuple[Iterator[dict[str, np.ndarray]], int]:
  """One epoch of DivideMix batches over a labelled/unlabelled division of `indices`, and its number of steps.

  `labelled` and `unlabelled` are positions in `indices`; U must not be empty unless L is. The epoch has one step
  per labelled batch, ⌈|L|/batch_size⌉ (none for an empty L); the last one is completed with the first examples
  of a reshuffle of L (fixed shapes under jit; dropping it would skip up to batch_size−1 labelled examples,
  padding would corrupt BatchNorm and mixup). The unlabelled batches cycle through successive reshuffles of U.
  Each step's batch holds `batch_size` labelled rows (`index`, `position`, `label`, one array per view) and as
  many unlabelled rows (the same keys prefixed `u_`, no label). Everything is a pure function of (`seed`, step):
  derive `seed` from (run seed, epoch, network).
  """
  indices, labelled, unlabelled = np.asarray(indices), np.asarray(labelled), np.asarray(unlabelled)
  rows = parallel.process_rows(batch_size)
  labelled_seed, unlabelled_seed, view_seed = (derive_seed(seed, k) for k in range(3))
  labelled_batches = (grain.MapDataset.range(len(labelled)).shuffle(seed=labelled_seed).repeat(None)
                      .batch(batch_size, drop_remainder=True))
  unlabelled_batches = (grain.MapDataset.range(len(unlabelled)).shuffle(seed=unlabelled_seed).repeat(None)
                        .batch(batch_size, drop_remainder=True))
  num_steps = steps_per_epoch(len(labelled), batch_size)

  def load(step: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rnd = BatchRandom(rng, rows, batch_size)
    batch = _load_rows(images, labels, indices, labelled[labelled_batches[step][rows]], views, rnd)
    other = _load_rows(images, labels, indices, unlabelled[unlabelled_batches[step][rows]], views, rnd)
    del other["label"]  # unlabelled: the step must not see it
    return {**batch, **{f"u_{k}": v for k, v in other.items()}}

  dataset = grain.MapDataset.range(num_steps).seed(view_seed).random_map(load)
  return loading.iterate(dataset), num_steps


def eval_batches(images, indices: np.ndarray, batch_size: int,
                 view: View | None = None, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """One sequential pass over `indices` in global batches of `batch_size`; the last batch is padded with
  repeats of the first index and `mask` marks the real rows. `view` (e.g. a strong augmentation for Prune4ReL's
  scoring pass) defaults to the raw images."""
  rows = parallel.process_rows(batch_size)
  num_batches = -(-len(indices) // batch_size)
  padded = np.full(num_batches * batch_size, indices[0] if len(indices) else 0, dtype=np.int64)
  padded[: len(indices)] = indices
  mask = np.arange(len(padded)) < len(indices)

  def load(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    global_rows = slice(b * batch_size, (b + 1) * batch_size)
    local = padded[global_rows][rows]
    raw = images[local]
    image = raw if view is None else view(raw, BatchRandom(rng, rows, batch_size))
    return {"image": image, "index": local.astype(np.int32), "mask": mask[global_rows][rows]}

  return Loading().iterate(grain.MapDataset.range(num_batches).seed(seed).random_map(load))


class OpenStreams:
  """The training streams of one phase, kept open from epoch to epoch: a stream is built once for all the phase's
  remaining steps and each epoch takes its steps from it, so grain's workers start once per phase, not once per
  epoch. Keyed by (seed, view names), as DivideMix's warm-up draws one stream per network. A context manager:
  leaving it shuts the streams' worker processes down; so does `finish_epoch` for streams the epoch did not read
  (DivideMix's warm-up streams once it co-trains on streams of its own)."""

  def __init__(self, end_epoch: int, loading: Loading = Loading()):
    self.end_epoch, self.loading = end_epoch, loading
    self._open: dict[tuple, _Stream] = {}
    self._read: set[tuple] = set()

  def take(self, data: "EpochData") -> Iterator[dict[str, np.ndarray]]:
    """`data`'s epoch of its stream: continues the open stream if it stands at this epoch's first step."""
    key, first = (data.seed, tuple(data.views)), data.epoch * data.steps
    self._read.add(key)
    stream = self._open.get(key)
    if stream is None or stream.position != first:
      if stream is not None:
        stream.close()
      stream = self._open[key] = _Stream(train_stream(
          data.images, data.labels, data.indices, batch_size=data.batch_size, seed=data.seed, views=data.views,
          start_step=first, num_steps=(self.end_epoch - data.epoch) * data.steps, loading=self.loading), first)
    return stream.take(data.steps)

  def finish_epoch(self) -> None:
    for key in set(self._open) - self._read:
      self._open.pop(key).close()
    self._read.clear()

  def __enter__(self) -> "OpenStreams":
    return self

  def __exit__(self, *exc) -> None:
    for stream in self._open.values():
      stream.close()
    self._open.clear()


class _Stream:
  """An open stream and the step it stands at (an epoch cut short leaves it where it stopped)."""

  def __init__(self, iterator: Iterator, position: int):
    self.iterator, self.position = iterator, position

  def take(self, num_steps: int) -> Iterator[dict[str, np.ndarray]]:
    for batch in itertools.islice(self.iterator, num_steps):
      self.position += 1
      yield batch

  def close(self) -> None:
    self.iterator.close()  # grain iterators with worker processes hold them until closed


@dataclasses.dataclass(frozen=True)
class EpochData:
  """One epoch of training data as a learner sees it: the (sub)set `indices` of the training set, its noisy
  `labels`, the views to produce, and the epoch's position in a seeded stream. `batches()` is the standard
  shuffled stream, continued from the previous epoch's when `streams` holds it open; learners that re-partition the
  data every epoch (DivideMix) build their own streams over `indices` (`co_divided_stream`)."""
  images: object
  labels: np.ndarray
  indices: np.ndarray
  batch_size: int
  seed: int
  epoch: int
  views: Mapping[str, View]
  desc: str
  phase: str = "train"  # "warmup" (before selection) or "train" (on the subset); DivideMix warms up in the former
  streams: OpenStreams | None = None

  @property
  def steps(self) -> int:
    return steps_per_epoch(len(self.indices), self.batch_size)

  @property
  def loading(self) -> Loading:
    return Loading() if self.streams is None else self.streams.loading

  def batches(self) -> Iterator[dict[str, np.ndarray]]:
    return (self.streams or OpenStreams(self.epoch + 1)).take(self)

  def network_stream(self, network: int, view: str = "image") -> "EpochData":
    """This epoch as another network of the learner sees it: its own shuffle (seeded by `network`), one view."""
    return dataclasses.replace(self, seed=derive_seed(self.seed, network), views={view: self.views[view]})

  def epoch_seed(self, *keys: int) -> int:
    """A seed for another draw of this epoch (a division's stream, a mixture fit): a pure function of the run's
    seed, the epoch and `keys`, so a resumed run draws the same."""
    return derive_seed(self.seed, self.epoch, *keys)

  def divided_batches(self, labelled: np.ndarray, unlabelled: np.ndarray, batch_size: int,
                      *keys: int) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """`co_divided_stream` over this epoch's examples (positions in `indices`), seeded by `epoch_seed(*keys)`."""
    return co_divided_stream(self.images, self.labels, self.indices, labelled, unlabelled, batch_size=batch_size,
                             seed=self.epoch_seed(*keys), views=self.views, loading=self.loading)

  def eval_batches(self, batch_size: int, view: View | None) -> Iterator[dict[str, np.ndarray]]:
    """One sequential pass over this epoch's examples (`eval_batches`)."""
    return eval_batches(self.images, self.indices, batch_size, view)
