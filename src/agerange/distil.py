"""Distillation: one fast student network trained on the trained model's probabilities.

The trained model is an ensemble (`train.ensemble_members`), which costs one top part per
member at predict time. The student is one network of the same backbone, perhaps at a smaller
input (`distil.image_size`), trained by the same recipe on soft targets: the ensemble's
probabilities on each training face (its mirror averaged in, as predict does), blended with
the label's own target. The package stage serves it when its accuracy allows
(`serving.choose_variant`).
"""

import dataclasses

import numpy as np

from agerange.config import DistilConfig, TrainConfig
from agerange.inference import predict_probabilities
from agerange.training import TrainData, TrainOptions, TrainResult, train
from agerange.training.data import training_targets


def student_config(teacher: TrainConfig, settings: DistilConfig) -> TrainConfig:
    """The student's training settings: the teacher's recipe, one member, the student's input
    size and seed."""
    return dataclasses.replace(
        teacher, image_size=settings.image_size, ensemble_members=1, seed=settings.seed
    )


def teacher_probabilities(teacher, chips: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The teacher's outputs on uint8 chips at its input size, averaged with the mirror image."""
    return predict_probabilities(teacher, chips, batch_size=batch_size, flip=True)


def blend_targets(teacher: np.ndarray, labels: np.ndarray, teacher_weight: float) -> np.ndarray:
    """Soft targets: `teacher_weight` of the teacher's probabilities, the rest the label's own
    target (which keeps the student anchored where the teacher is wrong)."""
    if teacher.shape != labels.shape:
        raise ValueError(
            f"teacher outputs {teacher.shape[1:]} do not match the student's targets {labels.shape[1:]} "
            "(train.head must be the teacher's)"
        )
    blended = teacher_weight * teacher + (1 - teacher_weight) * labels
    return (blended / blended.sum(axis=1, keepdims=True)).astype(np.float32)


def train_student(
    config: TrainConfig,
    data: TrainData,
    teacher_outputs: np.ndarray,
    teacher_weight: float,
    options: TrainOptions,
) -> TrainResult:
    """Train the student (`student_config`) on `data` with the blended targets of its rows."""
    if len(teacher_outputs) != len(data.train.groups):
        raise ValueError(f"{len(teacher_outputs)} teacher outputs for {len(data.train.groups)} training rows")
    labels = training_targets(data.train, config.neighbour_smoothing, config.age_sigma, config.head)
    targets = blend_targets(teacher_outputs, labels, teacher_weight)
    return train(config, data, dataclasses.replace(options, targets=targets))
