"""Quickstart: the whole pipeline on real data that ships inside scikit-learn, in about a minute on 2 cores.

  pip install . && prune4rel --config configs/quickstart.py

scikit-learn's 1,797 handwritten 8×8 digits (1,500 train / 297 clean test), 40 % symmetric label noise; a small
CNN is warmed up on the noisy set, Prune4ReL-style selection keeps `selection.fraction` of it, the learner is
retrained from scratch on that subset and scored on the clean test split.
"""

from prune4rel_jax.config import default_config


def get_config():
  c = default_config()
  c.data.name = "digits"
  c.data.noise_type = "sym"
  c.data.noise_rate = 0.4
  c.data.crop_padding = 1     # 8×8 images: a 1-pixel shift; digits are not flip-invariant
  c.data.flip = False
  c.model.name = "small_cnn"
  c.batch_size = 128
  c.epochs = 100
  c.optim.lr = 0.05
  c.selection.name = "uniform"
  c.selection.fraction = 0.5
  c.selection.warmup_epochs = 5
  # The originals' strong view (CIFAR AutoAugment with translations of up to 9 px, Cutout 16) erases 8×8 images:
  # a 4-px Cutout for SOP+'s second view, and Prune4ReL scores the plain images.
  c.data.cutout = 4
  c.selection.prune4rel.view = "test"
  return c
