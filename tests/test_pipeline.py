import functools
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from prune4rel_jax.config import default_config
from prune4rel_jax.data import augment, pipeline
from prune4rel_jax.errors import UserError


def _images(n=10, h=4):
  return (np.arange(n)[:, None, None, None] * np.ones((1, h, h, 1))).astype(np.uint8)


def _stream(indices, start, steps, seed=0, views=None, loading=pipeline.Loading()):
  images = _images(20)
  labels = np.arange(20) % 3
  return list(pipeline.train_stream(images, labels, np.asarray(indices), batch_size=4, seed=seed,
                                    views=views or {"image": lambda x, rnd: x}, start_step=start,
                                    num_steps=steps, loading=loading))


def _assert_same_batches(expected, actual):
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_every_example_once_per_epoch_and_positions_map_to_indices():
  indices = np.array([3, 5, 7, 11, 13, 17, 19, 2, 4, 6])  # 10 examples, batch 4: 3 steps per epoch
  steps = pipeline.steps_per_epoch(len(indices), 4)
  assert steps == 3
  batches = _stream(indices, 0, 5 * steps)
  seen = np.concatenate([b["index"] for b in batches])
  for epoch in range(3):  # the first 3 full epochs (10 examples each) are permutations of the subset
    np.testing.assert_array_equal(np.sort(seen[epoch * 10:(epoch + 1) * 10]), np.sort(indices))
  for b in batches:
    np.testing.assert_array_equal(indices[b["position"]], b["index"])
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["index"])  # image i has pixel value i
    np.testing.assert_array_equal(b["label"], b["index"] % 3)


def test_stream_is_a_pure_function_of_seed_and_step():
  indices = np.arange(20)
  view = {"image": functools.partial(augment.weak, crop_padding=1, flip=True)}
  whole = _stream(indices, 0, 8, views=view)
  _assert_same_batches(whole[5:], _stream(indices, 5, 3, views=view))
  other_seed = _stream(indices, 0, 8, seed=1, views=view)
  assert any((a["index"] != b["index"]).any() for a, b in zip(whole, other_seed))


def test_worker_processes_give_the_same_batches():
  view = {"image": functools.partial(augment.weak, crop_padding=1, flip=True)}
  in_process = _stream(np.arange(20), 3, 6, views=view)
  _assert_same_batches(in_process, _stream(np.arange(20), 3, 6, views=view,
                                           loading=pipeline.Loading(workers=2, read_threads=2)))


def _slow_copy(images, rnd):
  time.sleep(0.05)
  return images


def test_a_dead_worker_process_is_a_one_line_error():
  others = {child.pid for child in multiprocessing.active_children()}
  stream = pipeline.train_stream(_images(20), np.zeros(20, np.int64), np.arange(20), batch_size=4, seed=0,
                                 views={"image": _slow_copy}, start_step=0, num_steps=200,
                                 loading=pipeline.Loading(workers=2))
  next(stream)
  workers = [child.pid for child in multiprocessing.active_children() if child.pid not in others]
  os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would
  with pytest.raises(UserError, match="a data-loading worker process died .*lower loading.workers"):
    for _ in stream:
      pass


def test_open_streams_continue_each_stream_across_epochs(monkeypatch):
  """An epoch taken from a stream held open equals that epoch of a fresh stream; a stream is built once per
  (seed, views) while epochs follow each other, and again when an epoch is skipped or repeated (a resume)."""
  built = []
  original = pipeline.train_stream
  monkeypatch.setattr(pipeline, "train_stream", lambda *a, **k: built.append(k["start_step"]) or original(*a, **k))
  view = {"image": functools.partial(augment.weak, crop_padding=1, flip=True)}
  indices = np.arange(2, 12)  # 10 examples, batch 4: 3 steps per epoch

  def epoch(streams, number, seed=0):
    data = pipeline.EpochData(_images(20), np.arange(20) % 3, indices, 4, seed, number, view, "test",
                              streams=streams)
    return list(data.batches())

  with pipeline.OpenStreams(end_epoch=5) as streams:
    taken = {}
    for e in range(3):
      for seed in (0, 7):  # two streams read in turn, as DivideMix's networks
        taken[seed, e] = epoch(streams, e, seed)
      assert built == [0, 0]
      streams.finish_epoch()
    taken[0, 4] = epoch(streams, 4)  # epoch 3 skipped: a new stream from epoch 4's first step
    streams.finish_epoch()  # seed 7's stream was not read in epoch 4: closed
    taken[0, 1] = epoch(streams, 1)  # epoch 1 again: a new stream
    taken[7, 3] = epoch(streams, 3, seed=7)  # where seed 7's stream stood, but it was closed: a new stream
    assert built == [0, 0, 12, 3, 9]
  for (seed, e), batches in taken.items():
    _assert_same_batches(_stream(indices, e * 3, 3, seed=seed, views=view), batches)


def test_every_training_view_crops_to_the_image_size():
  """Views of one batch are stacked in one forward pass (SOP+'s weak‖strong): all must have the crop's side."""
  cfg = default_config().data
  cfg.update(image_size=24, crop="resized")
  images = np.random.default_rng(0).integers(0, 255, size=(3, 32, 32, 3), dtype=np.uint8)
  for name in ("image", "image2", "image_strong", "test"):
    out = augment.make_view(name, cfg, (0.5, 0.5, 0.5))(images, augment.BatchRandom(np.random.default_rng(1),
                                                                                  slice(0, 3), 3))
    assert out.shape == (3, 24, 24, 3), name


def test_eval_batches_pad_and_mask():
  batches = list(pipeline.eval_batches(_images(10), np.arange(10), batch_size=4))
  assert len(batches) == 3
  mask = np.concatenate([b["mask"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(index[mask], np.arange(10))
  assert mask.sum() == 10 and len(mask) == 12


def test_random_crop_matches_padded_window_reference():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, size=(6, 5, 5, 2), dtype=np.uint8)
  rnd = augment.BatchRandom(np.random.default_rng(4), slice(0, 6), 6)
  out = augment.random_crop(images, 2, rnd)
  offsets = np.random.default_rng(4)
  dy, dx = offsets.integers(0, 5, size=6), offsets.integers(0, 5, size=6)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(6):
    np.testing.assert_array_equal(out[i], padded[i, dy[i]:dy[i] + 5, dx[i]:dx[i] + 5])


def test_batch_random_rows_do_not_depend_on_process_split():
  """A process's rows get the same draws whether one or two processes share the global batch."""
  whole = augment.BatchRandom(np.random.default_rng(1), slice(0, 8), 8).integers(0, 100)
  second_half = augment.BatchRandom(np.random.default_rng(1), slice(4, 8), 8).integers(0, 100)
  np.testing.assert_array_equal(whole[4:], second_half)
