"""Training: two-phase transfer learning on face chips, fast on a CPU and on a GPU.

The recipe (`recipe.train`) reads top to bottom: build the classifier, choose what the trained
layers are fed (`feeds`: the cached frozen part on a CPU, the whole network on augmented images on
a GPU), train the head (`phases.train_head`), fine-tune the top layers (`phases.fine_tune`),
average the fine-tuning epochs that help (`soup`). `ensemble.train_members` repeats it with other
seeds. Every phase checkpoints each epoch and resumes where an interrupted run stopped.
"""

from agerange.training.data import SplitData, TrainData, load_split, probe_rows, stage_data
from agerange.training.device import configure_device, resolve_augment
from agerange.training.ensemble import train_members
from agerange.training.feature_cache import FeatureCache
from agerange.training.recipe import (
    TrainOptions,
    TrainResult,
    realign_recut,
    recut_identity,
    stage_options,
    train,
)

__all__ = [
    "FeatureCache",
    "SplitData",
    "TrainData",
    "TrainOptions",
    "TrainResult",
    "configure_device",
    "load_split",
    "probe_rows",
    "realign_recut",
    "recut_identity",
    "resolve_augment",
    "stage_data",
    "stage_options",
    "train",
    "train_members",
]
