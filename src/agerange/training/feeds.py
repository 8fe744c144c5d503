"""What the trained layers are fed: the cached frozen part's output (CPU) or the whole network
on augmented images (GPU, or a backbone trained from scratch)."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agerange.augment import degraded
from agerange.config import TrainConfig
from agerange.model import HEADS, split_at_boundary
from agerange.training.data import TrainData, make_dataset, validation_targets
from agerange.training.feature_cache import FeatureCache, Recut, recut_logged

log = logging.getLogger(__name__)


@dataclass
class Feed:
    """The Keras model that a phase fits, with its data."""

    trainer: Any  # fitting it trains the classifier's own layers
    train_data: Any  # the shuffled training dataset of the first run
    val_data: Any
    probe: tuple[Any, np.ndarray] | None  # (inputs, groups) predicted after every epoch
    reshuffled: Callable[[int], Any]  # seed -> the training dataset in another order


def augmentation(seed: int):
    """Flip, brightness, small shift and crop, applied on the fly to whole-network training."""
    import keras
    from keras import layers

    # one seed each: layers seeded alike draw the same numbers, so every mirrored image would
    # also be darkened and zoomed alike (four augmentations reduced to one)
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 1),
            layers.RandomTranslation(0.05, 0.05, fill_mode="reflect", seed=seed + 2),
            layers.RandomZoom((-0.08, 0.0), fill_mode="reflect", seed=seed + 3),  # a small crop
        ],
        name="augmentation",
    )


def _feed(trainer, train_inputs, val_inputs, probe, data: TrainData, targets, config: TrainConfig) -> Feed:
    train, val, size, seed = data.train, data.val, config.batch_size, config.seed
    val_targets = validation_targets(val, config.head)
    val_data = make_dataset(val_inputs, val.groups, val.weights, size, False, seed, val_targets)

    def reshuffled(run_seed: int):
        return make_dataset(train_inputs, train.groups, train.weights, size, True, run_seed, targets)

    return Feed(trainer, reshuffled(seed), val_data, probe, reshuffled)


def full_network_feed(model, config: TrainConfig, data: TrainData, targets, recut: Recut | None) -> Feed:
    """The whole network on augmented chips (and with `recut` their re-cut versions) each epoch."""
    import keras

    augment = augmentation(config.seed)
    inputs = keras.Input((config.image_size, config.image_size, 3))
    trainer = keras.Model(inputs, model(augment(inputs)))
    chips, paths = data.train.chips, data.train.table["path"].tolist()
    variants = [chips] + ([recut_logged(recut, chips)] if recut is not None else [])
    # real-photo versions, made once (the same images the CPU path caches); augmentation runs on
    # top. Each row shows one version per epoch, so they are a larger share here (2 of 4 with two
    # variants and the re-cut) than on a CPU, whose mirrors count as versions (2 of 6)
    variants += [
        degraded(chips, paths, variant, config.augment_strength) for variant in range(config.augment_variants)
    ]
    variants = variants if len(variants) > 1 else chips
    probe = data.probe and (data.probe.chips, data.probe.groups)
    return _feed(trainer, variants, data.val.chips, probe, data, targets, config)


def cached_feed(
    model, boundary: str, config: TrainConfig, data: TrainData, targets, cache: FeatureCache,
    recut: Recut | None,
) -> tuple[Feed, dict]:  # fmt: skip
    """The layers above `boundary`, on the frozen part's cached output; also returns the features."""
    bottom, trainer = split_at_boundary(model, boundary)
    key = (config.backbone, config.image_size, boundary)
    features = cache.boundary_features(
        bottom, key, data, config.batch_size, recut, config.augment_variants, config.augment_strength
    )
    log.info("cached the frozen part's output at layer %s: %s per image", boundary, features["val"].shape[1:])
    probe = data.probe and (features["probe"], data.probe.groups)
    return _feed(trainer, features["train"], features["val"], probe, data, targets, config), features


def pooled_head_feed(
    model, boundary: str, config: TrainConfig, data: TrainData, targets, cache: FeatureCache, features: dict
) -> Feed:
    """The head alone on the pretrained network's pooled features, the same in every ensemble
    member and sweep trial."""
    import keras

    key = (config.backbone, config.image_size, boundary)
    pooled = cache.pooled_features(model, boundary, key, features, data)
    inputs = keras.Input(pooled["val"].shape[1:], name="pooled")
    # the model's own head layers: training them here trains the model
    output = model.get_layer(HEADS[config.head][1])  # ten groups or the distribution over years
    trainer = keras.Model(inputs, output(model.get_layer("head_dropout")(inputs)))
    probe = data.probe and (pooled["probe"], data.probe.groups)
    return _feed(trainer, pooled["train"], pooled["val"], probe, data, targets, config)
