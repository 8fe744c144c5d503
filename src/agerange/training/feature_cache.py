"""The frozen part's outputs, computed once per image and reused by every epoch, member and trial.

On a CPU the layers below the freeze boundary never change, so their output for each training
image (and its mirror, and with `train.realign` its re-cut and the re-cut's mirror) is computed
once. Entries are keyed by file path, so sweep trials that rebalance the training split
differently share the images they have in common.
"""

import logging
import time
from collections.abc import Callable

import numpy as np

from agerange.augment import degraded
from agerange.training.data import SplitData, array_batches

log = logging.getLogger(__name__)


def train_kinds(recut: bool, variants: int = 0, strength: float = 0.0) -> list[str]:
    """The versions of a training image, in the order `boundary_features` lists them: plain and
    mirrored, with a re-cut the re-cut and its mirror, then `variants` real-photo versions
    (`augment.degrade` at `strength`, which is part of their name: another strength, other features)."""
    kinds = ["plain", "mirror"] + (["realigned", "realigned_mirror"] if recut else [])
    return kinds + [f"degraded_{variant}@{strength:g}" for variant in range(variants)]


def degraded_variant(kind: str) -> tuple[int, float] | None:
    """(variant, strength) of a `degraded_<variant>@<strength>` kind, None for the other kinds."""
    if not kind.startswith("degraded_"):
        return None
    variant, strength = kind.removeprefix("degraded_").split("@")
    return int(variant), float(strength)


# chips -> (the same chips re-cut the way predict cuts faces from photos, how many were re-cut);
# passed in by the caller (faces.realign_chips with the packaged detector), so training does not
# depend on face detection.
Recut = Callable[[np.ndarray], tuple[np.ndarray, int]]


def frozen_forward(bottom):
    """The frozen part as one traced function for batches of any size: traced once, not per call
    and per odd-sized last batch (each trace costs seconds; a training gathers many kinds)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *bottom.input.shape[1:]], tf.float32)
    return tf.function(lambda x: bottom(x, training=False), input_signature=[spec])


def compute_features(forward, chips: np.ndarray, batch_size: int, mirror: bool = False) -> np.ndarray:
    """Run the frozen part (`frozen_forward`'s function) once over all chips; stored as float16
    to halve memory."""
    outputs = []
    for start in range(0, len(chips), batch_size):
        batch = chips[start : start + batch_size].astype(np.float32)
        if mirror:
            batch = batch[:, :, ::-1]
        outputs.append(forward(batch).numpy().astype(np.float16))
    return np.concatenate(outputs)


def recut_logged(recut: Recut, chips: np.ndarray) -> np.ndarray:
    """`recut(chips)`, saying how many chips it re-cut and how long it took."""
    started = time.monotonic()
    realigned, count = recut(chips)
    seconds = time.monotonic() - started
    log.info("re-cut %d of %d chips the way predict cuts faces, in %.0f s", count, len(chips), seconds)
    return realigned


class FeatureCache:
    """Frozen-part outputs (and pooled head inputs) per (backbone, image size, cut), image and kind."""

    def __init__(self) -> None:
        self._stores: dict[tuple, dict] = {}

    def stored_keys(self) -> list[tuple]:
        """What it holds: (backbone, image size, boundary layer), and (backbone, image size,
        "pooled") once pooled head inputs were computed."""
        return list(self._stores)

    def boundary_features(
        self, bottom, key: tuple, data, batch_size: int, recut: Recut | None = None, variants: int = 0,
        strength: float = 0.0,
    ) -> dict[str, object]:  # fmt: skip
        """The frozen part's output for every split of `data` (a TrainData).

        `key` is (backbone, image_size, boundary layer). `features["train"]` lists the training
        rows' versions, named in `features["kinds"]` (`train_kinds`).
        """
        store = self._stores.setdefault(key, {"row": {}})
        kinds = train_kinds(recut is not None, variants, strength)
        forward = frozen_forward(bottom)
        features = {
            "kinds": kinds,
            "train": [self._gather(store, forward, data.train, batch_size, kind, recut) for kind in kinds],
            "val": self._gather(store, forward, data.val, batch_size, "plain", recut),
        }
        if data.probe is not None:
            features["probe"] = self._gather(store, forward, data.probe, batch_size, "plain", recut)
        return features

    def pooled_features(self, model, boundary: str, key: tuple, features: dict, data) -> dict[str, object]:
        """The pretrained network's pooled features (the head's input) for `features` (cut at
        `boundary`), each image and kind computed once and kept for later trials.

        Valid only while every layer between `boundary` and the pooling holds its pretrained
        weights: call it before training.
        """
        import keras

        store = self._stores.setdefault((*key[:2], "pooled"), {})
        pool = keras.Model(model.get_layer(boundary).output, model.get_layer("features").output)

        def pooled(split: SplitData, values: np.ndarray, kind: str) -> np.ndarray:
            paths = split.table["path"].tolist()
            missing = [index for index, path in enumerate(paths) if (path, kind) not in store]
            if missing:
                vectors = pool.predict(array_batches(values[missing].astype(np.float32), 256), verbose=0)
                for index, vector in zip(missing, vectors, strict=True):
                    store[(paths[index], kind)] = vector
            return np.stack([store[(path, kind)] for path in paths])

        result = {
            "train": [
                pooled(data.train, values, kind)
                for values, kind in zip(features["train"], features["kinds"], strict=True)
            ],
            "val": pooled(data.val, features["val"], "plain"),
        }
        if data.probe is not None:
            result["probe"] = pooled(data.probe, features["probe"], "plain")
        return result

    @staticmethod
    def _recut(store: dict, paths: list[str], chips: np.ndarray, recut: Recut) -> np.ndarray:
        """Re-cut chips for these paths, each computed once and kept for the other kinds that need it."""
        done = store.setdefault("recut", {})
        todo = [index for index, path in enumerate(paths) if path not in done]
        if todo:
            for index, chip in zip(todo, recut_logged(recut, chips[todo]), strict=True):
                done[paths[index]] = chip
        return np.stack([done[path] for path in paths])

    def _gather(
        self, store: dict, forward, split: SplitData, batch_size: int, kind: str, recut: Recut | None
    ) -> np.ndarray:
        """Features of a split's rows, computing only the images (of this kind) not seen before."""
        rows = store["row"]
        paths = split.table["path"].tolist()
        first_of: dict[str, int] = {}
        for index, path in enumerate(paths):
            first_of.setdefault(path, index)
        missing = [path for path in first_of if (path, kind) not in rows]
        blocks = store.setdefault(kind, [])
        if missing:
            chips = split.chips[[first_of[path] for path in missing]]
            if kind.startswith("realigned"):
                chips = self._recut(store, missing, chips, recut)
            elif (variant := degraded_variant(kind)) is not None:
                chips = degraded(chips, missing, *variant)
            computed = compute_features(forward, chips, batch_size, mirror=kind.endswith("mirror"))
            offset = sum(len(block) for block in blocks)
            blocks.append(computed)
            for position, path in enumerate(missing):
                rows[(path, kind)] = offset + position
        every = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        store[kind] = [every]
        return every[[rows[(path, kind)] for path in paths]]
