"""The training recipe: build, choose the feed, train the head, fine-tune, soup."""

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agerange.backbones import get_backbone
from agerange.config import PackageConfig, TrainConfig
from agerange.faces import chip_recut
from agerange.model import boundary_layer, build_classifier, first_trainable_index, unfreeze
from agerange.training.data import TrainData, training_targets
from agerange.training.device import resolve_augment
from agerange.training.feature_cache import FeatureCache, Recut
from agerange.training.feeds import cached_feed, full_network_feed, pooled_head_feed
from agerange.training.phases import (
    EpochHook,
    fine_tune,
    phase_one_weights,
    train_from_scratch,
    train_head,
    validation_score,
)

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """How a training runs, as opposed to what it trains (`TrainConfig`)."""

    checkpoint_dir: Path  # per-epoch checkpoints live here until training ends
    on_epoch: EpochHook | None = None  # tracking hook called after every epoch
    augment: bool = False  # whole network on augmented images (GPU) instead of cached features
    jit: bool = False  # compile with XLA (GPU)
    recut: Recut | None = None  # with `train.realign`: re-cuts chips the way predict cuts faces
    feature_cache: FeatureCache | None = None  # shared by the trainings of a sweep or an ensemble
    # place the cache boundary as if this many layers were unfrozen (the deepest a sweep can ask
    # for), so every trial of a backbone shares one cache; the layers in between stay frozen
    cache_unfreeze_layers: int | None = None
    # leave checkpoint_dir in place when done (the caller removes it); an ensemble keeps every
    # member's, epoch snapshots included (bench/recipe_probe.py scores fewer epochs from them)
    keep_checkpoints: bool = False
    label: str = ""  # names the training in its log lines ("member 1/2")
    # soft targets per training row instead of the labels' own (a distilled student's, `distil`)
    targets: np.ndarray | None = None


def stage_options(
    config: TrainConfig,
    device: dict[str, object],
    package: PackageConfig,
    checkpoint_dir: Path,
    on_epoch: EpochHook,
) -> TrainOptions:
    """How a stage's training runs on this device (`configure_device`'s answer): augmented online
    on a GPU with XLA or from the cache on a CPU (`train.augment`), and with `realign_recut`."""
    return TrainOptions(
        checkpoint_dir=checkpoint_dir, on_epoch=on_epoch, augment=resolve_augment(config.augment, device),
        jit=bool(device["xla"]), recut=realign_recut(config, package),
    )  # fmt: skip


def realign_recut(config: TrainConfig, package: PackageConfig) -> Recut | None:
    """With `train.realign`, training chips are also re-cut the way predict cuts faces (its
    `package.detector` and minimum score); None when it is off. The train, distil and tune
    stages all train this way."""
    return chip_recut(package.detector, package.min_detector_score) if config.realign else None


def recut_identity(package: PackageConfig) -> list:
    """The settings the re-cut chips depend on (`realign_recut`'s), for a stage's resume key:
    checkpoints trained on chips cut by another detector are not resumed."""
    return [package.detector, package.min_detector_score]


@dataclass
class TrainResult:
    """What a training run produced."""

    model: object  # the Keras inference model (pixels in, probabilities out)
    history: pd.DataFrame  # one row per epoch: phase, epoch, loss, accuracy, val_*, probe_accuracy
    boundary: str | None  # layer whose output was cached, None when the full network ran
    seconds: float
    images_per_second: float  # training throughput, images (not cached features) per second
    # validation accuracy of the returned model itself, measured on it: not the best epoch's,
    # which may be a phase-1 epoch whose weights the model no longer holds
    val_accuracy: float
    soup: dict | None = field(default=None)  # the fine-tuning epochs averaged and its val accuracy


def train(config: TrainConfig, data: TrainData, options: TrainOptions) -> TrainResult:
    """Two-phase training: the head on a frozen backbone, then the top `unfreeze_layers` layers."""
    import keras

    check(config, options)
    keras.utils.set_random_seed(config.seed)
    started = time.monotonic()
    model = build_classifier(
        config.backbone,
        config.image_size,
        Path(config.weights_dir),
        config.dropout,
        config.weights_sha256,
        config.head,
    )
    Path(options.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    targets = options.targets
    if targets is None:
        targets = training_targets(data.train, config.neighbour_smoothing, config.age_sigma, config.head)
    records: list[dict] = []
    if get_backbone(config.backbone).weights_file is None:  # nothing pretrained: one phase
        feed = full_network_feed(model, config, data, targets, recut=None)
        epochs = train_from_scratch(feed, config, options, records)
        accuracy = validation_score(feed, config, options.jit)
        return _result(model, records, None, started, epochs * len(data.train.groups), accuracy)

    boundary = _freeze_boundary(model, config, options)
    recut = options.recut if config.realign else None
    if boundary is None:
        feed = head_feed = full_network_feed(model, config, data, targets, recut)
    else:
        cache = options.feature_cache or FeatureCache()
        feed, features = cached_feed(model, boundary, config, data, targets, cache, recut)
        # Phase 1 trains the head alone, on the pretrained network's pooled features computed once
        # per image and version: a head epoch then costs about a second, not a pass through the
        # whole top of the network (ensemble members and sweep trials share them). Not when an
        # interrupted run already finished phase 1.
        head_feed = feed
        if _below_pooling(model, boundary) and not phase_one_weights(options.checkpoint_dir).is_file():
            head_feed = pooled_head_feed(model, boundary, config, data, targets, cache, features)
    epochs = train_head(model, head_feed, config, options, records)
    soup, last_feed = None, head_feed
    if config.unfreeze_layers > 0 and config.finetune_epochs > 0:
        more, soup = fine_tune(model, feed, config, options, records)
        epochs += more
        last_feed = feed
    accuracy = soup["val_accuracy"] if soup else validation_score(last_feed, config, options.jit)
    if not options.keep_checkpoints:  # finished and scored: nothing left to resume
        shutil.rmtree(options.checkpoint_dir, ignore_errors=True)
    return _result(model, records, boundary, started, epochs * len(data.train.groups), accuracy, soup)


def check(config: TrainConfig, options: TrainOptions) -> None:
    """Refuse settings that cannot work together, before anything is built."""
    if config.finetune_runs > 1 and not config.weight_soup:
        raise ValueError(
            f"finetune_runs {config.finetune_runs} needs weight_soup: without it only one run is kept"
        )
    if config.realign and options.recut is None and get_backbone(config.backbone).weights_file:
        raise ValueError("train.realign needs a re-cut function (TrainOptions.recut)")


def _freeze_boundary(model, config: TrainConfig, options: TrainOptions) -> str | None:
    """The layer whose output is cached, below every layer a run trains (None: `augment`, the
    whole network runs every epoch). Leaves the backbone frozen for phase 1."""
    unfreeze(model, config.backbone, max(config.unfreeze_layers, options.cache_unfreeze_layers or 0))
    boundary = None if options.augment else boundary_layer(model, first_trainable_index(model))
    unfreeze(model, config.backbone, 0)
    return boundary


def _below_pooling(model, boundary: str) -> bool:
    """Whether the cut lies below the pooling layer (with nothing unfrozen it lies above it, and
    the cached output already is the head's input)."""
    names = [layer.name for layer in model.layers]
    return names.index(boundary) < names.index("features")


def _result(model, records, boundary, started, images_seen, val_accuracy, soup=None) -> TrainResult:
    seconds = time.monotonic() - started
    return TrainResult(
        model=model,
        history=pd.DataFrame(records),
        boundary=boundary,
        seconds=seconds,
        images_per_second=images_seen / seconds if seconds else 0.0,
        val_accuracy=val_accuracy,
        soup=soup,
    )
