"""ImageNet-1K with 20 % asymmetric synthetic noise (y → y + 1 mod 1000), the original's `scripts/sop_imagenet_02.sh`.

  prune4rel --config configs/imagenet.py:sop_plus --config.data.dir=/path/to/imagenet

`data.dir` holds train/<wnid>/ and val/<wnid>/ (README, Datasets); the test set is the validation set. The
argument picks the learner: ce | sop_plus (default) | dividemix. `data.noise_type=sym|asym`, `data.noise_rate`.
Images: shorter side 256, central 256×256, RandomCrop(224, padding 4) + flip; test CenterCrop 224. The script loops
`selection.fraction` over 0.05, 0.1, 0.2, 0.4.
"""

from prune4rel_jax.config import default_config


def get_config(learner: str = "sop_plus"):
  c = default_config()
  c.data.name = "imagenet"
  c.data.update(noise_type="asym", noise_rate=0.2)
  c.data.update(image_size=224, crop="pad", crop_padding=4, flip=True)
  c.model.name = "resnet50"
  c.epochs = 50
  c.batch_size = 64
  c.optim.update(lr=0.02, weight_decay=1e-3, schedule="cosine")
  c.selection.name = "prune4rel"
  c.selection.update(fraction=0.05, balance=True, warmup_epochs=10)  # -se 10
  c.selection.prune4rel.update(tau=0.95, eta=100.0)  # the script does not pass --eta: the argparse default
  c.learner.name = learner
  if learner == "sop_plus":
    c.learner.sop_plus.update(lr_u=0.1, lr_v=1.0, ratio_consistency=0.0, ratio_balance=0.0)  # plain SOP
  elif learner == "dividemix":
    # No ImageNet DivideMix setting exists in either original; DivideMix's 224-px (WebVision) recipe.
    c.learner.dividemix.update(warmup_epochs=1, p_threshold=0.5, temperature=0.5, alpha=0.5, lambda_u=0.0,
                               rampup_epochs=0, gmm_reg_covar=5e-4, loss_history=1, confidence_penalty="auto",
                               mix_unlabelled="partners")
  return c
