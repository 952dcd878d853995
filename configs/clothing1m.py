"""Clothing-1M (real noise), the original's `scripts/dividemix_c1m.sh`.

  prune4rel --config configs/clothing1m.py:dividemix --config.data.dir=/path/to/clothing1m

`data.dir` holds images/ and the original's noisy_train.txt + clean_val.txt, or the official key/label files
(README, Datasets). The test set is the clean validation set, as the original (`--config.data.eval_split=test`
uses the official clean test set). The argument picks the learner: ce | sop_plus (default) | dividemix.
Model: the original fine-tunes an ImageNet-pretrained ResNet-50; pretrained weights are not available in this
package, so the ResNet-50 starts from scratch. The script loops `selection.fraction` over 0.01, 0.05, 0.1, 0.2.
"""

from prune4rel_jax.config import default_config


def get_config(learner: str = "sop_plus"):
  c = default_config()
  c.data.name = "clothing1m"
  c.data.noise_type = "clean"  # no synthetic noise: the labels are the shops'
  c.data.update(image_size=224, crop="pad", crop_padding=4, flip=True)
  c.model.name = "resnet50"
  c.epochs = 10
  c.batch_size = 32
  # MultiStepLR at epochs/2 = 5 (the original's net2 milestone is hard-coded at 150, i.e. never).
  c.optim.update(lr=0.002, weight_decay=1e-3, schedule="multistep", milestones=(5,), gamma=0.1)
  c.selection.name = "prune4rel"
  c.selection.update(fraction=0.01, balance=True, warmup_epochs=1)  # -se 1
  c.selection.prune4rel.update(tau=0.8, eta=1.0)
  c.learner.name = learner
  if learner == "sop_plus":
    # No SOP Clothing-1M script in the original; SOP's own Clothing-1M settings (plain SOP).
    c.learner.sop_plus.update(lr_u=0.1, lr_v=1.0, ratio_consistency=0.0, ratio_balance=0.0)
  elif learner == "dividemix":
    # alpha as the script passes it; it also passes λu 0.1, but DivideMix's Clothing-1M recipe mixes only the
    # labelled partners and has no L_u (λu 0), which is what mix_unlabelled="partners" runs.
    c.learner.dividemix.update(warmup_epochs=1, p_threshold=0.5, temperature=0.5, alpha=0.5, lambda_u=0.0,
                               rampup_epochs=0, gmm_reg_covar=5e-4, loss_history=1, confidence_penalty=True,
                               mix_unlabelled="partners")
  return c
