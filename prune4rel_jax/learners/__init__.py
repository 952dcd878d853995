"""Learners by name: `config.learner.name` picks one; `config.learner.<name>` holds its hyperparameters."""

from prune4rel_jax.learners.base import Learner, TrainState
from prune4rel_jax.learners.ce import CrossEntropy
from prune4rel_jax.learners.dividemix import DivideMix
from prune4rel_jax.learners.sop import SOPPlus
from prune4rel_jax.registry import Registry

__all__ = ["LEARNERS", "Learner", "TrainState"]

LEARNERS = Registry("learner", {learner.name: learner for learner in (CrossEntropy, DivideMix, SOPPlus)})
