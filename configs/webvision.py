"""mini-WebVision (first 50 classes, Google images; real web noise), the original's `scripts/sop_WebV.sh`.

  prune4rel --config configs/webvision.py:sop_plus --config.data.dir=/path/to/webvision

`data.dir` holds info/, google/ and val_images/ (README, Datasets); the test set is the WebVision validation set
of those classes. The argument picks the learner: ce | sop_plus (default) | dividemix. Images are decoded at
256×256 and trained on RandomCrop(224, padding 4) + flip, tested on CenterCrop 224, as the original.
Model: the original trains InceptionResNetV2 from scratch, which this package does not have; ResNet-50 stands in.
The script loops `selection.fraction` over 0.2, 0.4, 0.6, 0.8.
"""

from prune4rel_jax.config import default_config


def get_config(learner: str = "sop_plus"):
  c = default_config()
  c.data.name = "webvision"
  c.data.noise_type = "clean"  # no synthetic noise: the labels are the web's
  c.data.update(image_size=224, crop="pad", crop_padding=4, flip=True)
  c.model.name = "resnet50"
  c.epochs = 100
  c.batch_size = 32
  c.optim.update(lr=0.02, weight_decay=5e-4, schedule="multistep", milestones=(50,), gamma=0.1)
  c.selection.name = "prune4rel"
  c.selection.update(fraction=0.2, balance=True, warmup_epochs=10)  # -se 10
  c.selection.prune4rel.update(tau=0.95, eta=1.0)
  c.learner.name = learner
  if learner == "sop_plus":
    # The script passes `-rc $seed` (its seed loop variable: 0, 1, 2, most likely a bug) and -rb 0; 0 is its
    # first value and SOP's WebVision setting (plain SOP).
    c.learner.sop_plus.update(lr_u=0.1, lr_v=1.0, ratio_consistency=0.0, ratio_balance=0.0)
  elif learner == "dividemix":
    # The original has no DivideMix WebVision script; DivideMix's own WebVision settings.
    c.learner.dividemix.update(warmup_epochs=1, p_threshold=0.5, temperature=0.5, alpha=0.5, lambda_u=0.0,
                               rampup_epochs=0, gmm_reg_covar=5e-4, loss_history=1, confidence_penalty=False,
                               mix_unlabelled="partners")
  return c
