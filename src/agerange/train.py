"""Training: two-phase transfer learning on face chips, fast on a CPU and on a GPU.

On a CPU the frozen part of the network is run once per image (and once per mirrored, and
with `realign` once per re-cut, training image) and its output cached, so every epoch runs
only the trained layers. With `augment: true` (the GPU default) the whole network runs each
epoch on augmented images.
Every epoch is checkpointed; an interrupted training resumes where it stopped.
"""

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agerange.backbones import get_backbone
from agerange.files import atomic_path
from agerange.inference import decode_probabilities
from agerange.labels import GROUP_NAMES, age_distribution
from agerange.model import (
    boundary_layer,
    build_classifier,
    first_trainable_index,
    split_at_boundary,
    unfreeze,
)
from agerange.preprocess import load_chips

log = logging.getLogger(__name__)

EpochHook = Callable[[str, int, dict[str, float]], None]  # (phase, global epoch, metrics)


@dataclass
class SplitData:
    """Decoded chips and labels of one split."""

    chips: np.ndarray  # uint8 (N, S, S, 3)
    groups: np.ndarray  # int (N,)
    weights: np.ndarray  # float (N,), loss weight per row
    table: pd.DataFrame = field(repr=False)


@dataclass
class TrainResult:
    """What a training run produced."""

    model: object  # the Keras inference model (pixels in, probabilities out)
    history: pd.DataFrame  # one row per epoch: phase, epoch, loss, accuracy, val_*, probe_accuracy
    boundary: str | None  # layer whose output was cached, None when the full network ran
    seconds: float
    images_per_second: float  # training throughput, images (not cached features) per second
    soup: dict | None = None  # weight soup: the fine-tuning epochs averaged and its val accuracy

    @property
    def best_val_accuracy(self) -> float:
        """Validation accuracy of the returned model: the soup's, or the best epoch's without one."""
        if self.soup and self.soup.get("members"):  # an ensemble (train_members)
            return self.soup["val_accuracy"]
        best_epoch = float(self.history["val_accuracy"].max())
        return max(best_epoch, self.soup["val_accuracy"]) if self.soup else best_epoch


def configure_device(mixed_precision: str = "auto") -> dict[str, object]:
    """Use the GPU with mixed precision and XLA when there is one; tune threads on a CPU.

    Called by entry points only (never on import). Returns what was chosen, for logging.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    use_mixed = bool(gpus) if mixed_precision == "auto" else mixed_precision == "on"
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    return {
        "device": "gpu" if gpus else "cpu",
        "gpus": len(gpus),
        "mixed_precision": use_mixed,
        "xla": bool(gpus),
    }


def load_split(table: pd.DataFrame, images_dir: Path, image_size: int, workers: int = 0) -> SplitData:
    """Decode the chips of a table's rows (each distinct file once) with their labels."""
    paths = table["path"].tolist()
    distinct = sorted(set(paths))
    chips = load_chips([images_dir / path for path in distinct], image_size, workers)
    position = {path: index for index, path in enumerate(distinct)}
    order = np.fromiter((position[path] for path in paths), dtype=np.int64, count=len(paths))
    weights = table["weight"].to_numpy(np.float32) if "weight" in table else np.ones(len(table), np.float32)
    return SplitData(
        chips[order], table["age_group"].to_numpy(np.int64), weights, table.reset_index(drop=True)
    )


def soft_labels(groups: np.ndarray, neighbour_smoothing: float) -> np.ndarray:
    """Targets that move `neighbour_smoothing` of the mass to the adjacent age groups.

    Age groups are ordered: calling a 30-year-old 'Young Adult' is a smaller error than
    'Senior'. Unlike uniform label smoothing, this teaches the model that ordering.
    """
    n = len(GROUP_NAMES)
    kernel = np.zeros((n, n), dtype=np.float32)
    for group in range(n):
        neighbours = [g for g in (group - 1, group + 1) if 0 <= g < n]
        kernel[group, group] = 1.0 - neighbour_smoothing
        for neighbour in neighbours:
            kernel[group, neighbour] = neighbour_smoothing / len(neighbours)
    return kernel[groups]


def training_targets(split: SplitData, neighbour_smoothing: float, age_sigma: float) -> np.ndarray:
    """Soft targets of a split's rows: from each face's own age when `age_sigma` > 0
    (`labels.age_distribution`), otherwise its group with `neighbour_smoothing`."""
    if age_sigma > 0:
        return age_distribution(split.table["age"].to_numpy(np.float64), age_sigma)
    return soft_labels(split.groups, neighbour_smoothing)


def within_one(y_true, y_pred):
    """Share of predictions at most one age group away (a Keras metric function)."""
    from keras import ops

    distance = ops.abs(ops.argmax(y_true, axis=-1) - ops.argmax(y_pred, axis=-1))
    return ops.mean(ops.cast(distance <= 1, "float32"))


def _augmentation(seed: int):
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed),
            layers.RandomTranslation(0.05, 0.05, fill_mode="reflect", seed=seed),
            layers.RandomZoom((-0.08, 0.0), fill_mode="reflect", seed=seed),  # a small crop
        ],
        name="augmentation",
    )


def _compile(model, learning_rate: float, jit: bool) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"), within_one],
        jit_compile=jit,
    )


def _dataset(variants, groups, weights, batch_size, shuffle, seed, targets=None):
    """tf.data pipeline over in-memory arrays: shuffle, pick a variant per row, batch, prefetch.

    `variants` is one array, or a list of same-shaped arrays holding versions of each row (the
    chip's features, its mirror's, its re-cut's...): each epoch shows every row once, as one of
    its versions picked at random. `targets` are soft labels per row (default: one-hot groups).
    """
    import tensorflow as tf

    variants = variants if isinstance(variants, list) else [variants]
    targets = soft_labels(groups, 0.0) if targets is None else targets
    data = tf.data.Dataset.from_tensor_slices((tuple(variants), targets, weights))
    if shuffle:
        data = data.shuffle(len(groups), seed=seed, reshuffle_each_iteration=True)
    rng = tf.random.Generator.from_seed(seed)

    def pick(versions, labels, row_weights):
        if len(versions) == 1:
            return versions[0], labels, row_weights
        choice = rng.uniform((), minval=0, maxval=len(versions), dtype=tf.int32)
        return tf.stack(versions)[choice], labels, row_weights

    return data.map(pick, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _compute_features(bottom, chips: np.ndarray, batch_size: int, mirror: bool = False) -> np.ndarray:
    """Run the frozen part once over all chips; stored as float16 to halve memory."""
    import tensorflow as tf

    forward = tf.function(lambda x: bottom(x, training=False), reduce_retracing=True)
    outputs = []
    for start in range(0, len(chips), batch_size):
        batch = chips[start : start + batch_size].astype(np.float32)
        if mirror:
            batch = batch[:, :, ::-1]
        outputs.append(forward(batch).numpy().astype(np.float16))
    return np.concatenate(outputs)


class _EpochCallback:
    """Keras callback factory: records each epoch, predicts the probe set, calls the tracking hook."""

    @staticmethod
    def make(phase: str, offset: int, records: list, probe, hook: EpochHook | None):
        import keras

        class EpochCallback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                row = {"phase": phase, "epoch": offset + epoch + 1}
                row.update({key: float(value) for key, value in (logs or {}).items()})
                if probe is not None:
                    inputs, groups = probe
                    predicted, _ = decode_probabilities(self.model.predict(inputs, verbose=0))
                    row["probe_accuracy"] = float((predicted == groups).mean())
                records.append(row)
                if hook is not None:
                    hook(phase, row["epoch"], {k: v for k, v in row.items() if k not in ("phase", "epoch")})

        return EpochCallback()


class _SnapshotCallback:
    """Keras callback factory: saves the trained weights after every epoch, for the weight soup."""

    @staticmethod
    def make(folder: Path, offset: int):
        import keras

        class SnapshotCallback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                # On disk, not in memory: an interrupted fine-tuning resumes with its earlier epochs;
                # atomic, so a kill mid-write leaves no half snapshot to break that resume.
                accuracy = float((logs or {})["val_accuracy"])
                with atomic_path(folder / f"epoch_{offset + epoch + 1:03d}.npz") as path:
                    np.savez(path, accuracy, *self.model.get_weights())

        return SnapshotCallback()


def _load_snapshots(folder: Path) -> list[tuple[int, float, list[np.ndarray]]]:
    """(epoch, val accuracy, weights) of every saved snapshot, best val accuracy first."""
    snapshots = []
    for path in sorted(folder.glob("epoch_*.npz")):
        with np.load(path) as arrays:
            values = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
        snapshots.append((int(path.stem.split("_")[1]), float(values[0]), values[1:]))
    return sorted(snapshots, key=lambda snapshot: -snapshot[1])


def greedy_soup(trainer, snapshots: list[tuple[int, float, list[np.ndarray]]], val_data) -> dict:
    """Average the weights of the fine-tuning epochs that help, chosen on the validation split.

    The "greedy soup" of Wortsman et al. (2022): start from the best epoch, add each next-best
    epoch to the average if validation accuracy does not drop. Exact here because
    BatchNormalization stays frozen (its statistics need no re-estimate after averaging).
    Leaves `trainer` holding the soup's weights.

    Returns:
        {"epochs": the epochs averaged, "val_accuracy": the soup's validation accuracy}.
    """

    def mean(members):
        # Floating weights are averaged; integer state (augmentation seeds) is the best member's.
        return [
            np.mean(arrays, axis=0).astype(arrays[0].dtype) if np.issubdtype(arrays[0].dtype, np.floating)
            else arrays[0]
            for arrays in zip(*(weights for _, _, weights in members), strict=True)
        ]  # fmt: skip

    def accuracy(weights) -> float:
        trainer.set_weights(weights)
        return float(trainer.evaluate(val_data, verbose=0, return_dict=True)["accuracy"])

    soup = snapshots[:1]
    best = accuracy(mean(soup))
    for candidate in snapshots[1:]:
        score = accuracy(mean([*soup, candidate]))
        if score >= best:
            soup, best = [*soup, candidate], score
    trainer.set_weights(mean(soup))
    return {"epochs": sorted(epoch for epoch, _, _ in soup), "val_accuracy": best}


def _fit(model, train_data, val_data, epochs, patience, checkpoint_dir, callbacks):
    """Fit with early stopping (best weights restored) and an epoch checkpoint to resume from."""
    import keras

    if epochs <= 0:
        return 0
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        verbose=2,
        callbacks=[
            keras.callbacks.BackupAndRestore(str(checkpoint_dir), delete_checkpoint=True),
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=patience, restore_best_weights=True
            ),
            *callbacks,
        ],
    )
    return len(history.epoch)


def train(
    train: SplitData,
    val: SplitData,
    probe: SplitData | None,
    backbone: str,
    image_size: int,
    weights_dir: Path,
    unfreeze_layers: int,
    dropout: float,
    head_learning_rate: float,
    finetune_learning_rate: float,
    head_epochs: int,
    finetune_epochs: int,
    patience: int,
    batch_size: int,
    neighbour_smoothing: float,
    augment: bool,
    seed: int,
    checkpoint_dir: Path,
    weights_sha256: str | None = None,
    on_epoch: EpochHook | None = None,
    jit: bool = False,
    feature_cache: dict | None = None,
    cache_unfreeze_layers: int | None = None,
    realign: bool = False,
    weight_soup: bool = False,
    age_sigma: float = 0.0,
    finetune_runs: int = 1,
    keep_checkpoints: bool = False,
    pooled_head: bool = False,
) -> TrainResult:
    """Two-phase training: the head on a frozen backbone, then the top `unfreeze_layers` layers.

    Args:
        train, val, probe: decoded splits (probe: a fixed set predicted after every epoch).
        backbone: a name from the backbone registry.
        image_size: chip side in pixels.
        weights_dir: folder with the pretrained weights files.
        unfreeze_layers: backbone layers trained in phase 2 (BatchNormalization stays frozen).
        dropout: dropout before the classification layer.
        head_learning_rate, finetune_learning_rate: Adam learning rates of phase 1 and phase 2.
        head_epochs, finetune_epochs: maximum epochs per phase (early stopping may end sooner).
        patience: epochs without a better validation accuracy before stopping.
        batch_size: images per step.
        neighbour_smoothing: share of each target moved to the adjacent age groups (when
            `age_sigma` is 0).
        augment: run the whole network on augmented images each epoch (flip, brightness,
            small shift and crop) instead of caching the frozen part's output.
        seed: seed for Keras, shuffling and augmentation.
        checkpoint_dir: where per-epoch checkpoints live until training ends.
        weights_sha256: expected checksum of the weights file (defaults to the registry's).
        on_epoch: tracking hook called after every epoch.
        jit: compile with XLA (GPU).
        feature_cache: a dict shared across calls (an Optuna study) to reuse cached features.
        cache_unfreeze_layers: place the cache boundary as if this many layers were unfrozen
            (the deepest a sweep can ask for), so every trial of a backbone shares one cache;
            the layers between that boundary and `unfreeze_layers` stay frozen.
        realign: also train on each chip re-cut the way predict cuts faces from photos
            (`faces.realign_chips`), so the model knows the alignment jitter it meets there.
        weight_soup: end with the average of the fine-tuning epochs that help on validation
            (`greedy_soup`) instead of the single best epoch.
        age_sigma: when > 0, targets are each face's age spread by this much on a log(1 + age)
            scale (`labels.age_distribution`) instead of `neighbour_smoothing`.
        finetune_runs: phase-2 runs, each from the end of phase 1 with its own data order; their
            epochs all go into the weight soup (which they need: without it only one run is kept).
        keep_checkpoints: leave `checkpoint_dir` in place when done (the caller removes it).
        pooled_head: with a `feature_cache`, phase 1 trains the head on the pretrained network's
            pooled features, computed once per image and kept in the cache: phase 1 trains only
            the head, so they are the same for every trial of a sweep (the same model, faster).
    """
    import keras

    if finetune_runs > 1 and not weight_soup:
        raise ValueError(f"finetune_runs {finetune_runs} needs weight_soup: without it only one run is kept")
    keras.utils.set_random_seed(seed)
    started = time.monotonic()
    model = build_classifier(backbone, image_size, weights_dir, dropout, weights_sha256)
    pretrained = get_backbone(backbone).weights_file is not None
    records: list[dict] = []
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    images_seen = 0
    targets = training_targets(train, neighbour_smoothing, age_sigma)

    if not pretrained:
        # Trained from scratch: one phase over augmented images.
        augmentation = _augmentation(seed)
        inputs = keras.Input((image_size, image_size, 3))
        trainer = keras.Model(inputs, model(augmentation(inputs)))
        _compile(trainer, head_learning_rate, jit)
        callback = _EpochCallback.make("train", 0, records, probe and (probe.chips, probe.groups), on_epoch)
        epochs = _fit(
            trainer,
            _dataset(train.chips, train.groups, train.weights, batch_size, True, seed, targets),
            _dataset(val.chips, val.groups, val.weights, batch_size, False, seed),
            head_epochs + finetune_epochs, patience, checkpoint_dir / "phase1", [callback],
        )  # fmt: skip
        images_seen += epochs * len(train.groups)
        return _result(model, records, None, started, images_seen)

    unfreeze(model, backbone, max(unfreeze_layers, cache_unfreeze_layers or 0))
    boundary = None if augment else boundary_layer(model, first_trainable_index(model))
    unfreeze(model, backbone, 0)  # phase 1: backbone frozen

    if boundary is None:
        augmentation = _augmentation(seed)
        inputs = keras.Input((image_size, image_size, 3))
        trainer = keras.Model(inputs, model(augmentation(inputs)))
        variants = [train.chips, _realigned(train.chips)] if realign else train.chips
        val_data = _dataset(val.chips, val.groups, val.weights, batch_size, False, seed)
        probe_inputs = probe and (probe.chips, probe.groups)
    else:
        bottom, trainer = split_at_boundary(model, boundary)
        features = _cached_features(
            feature_cache, bottom, boundary, backbone, image_size, train, val, probe, batch_size, realign
        )
        variants = features["train"]
        val_data = _dataset(features["val"], val.groups, val.weights, batch_size, False, seed)
        probe_inputs = probe and (features["probe"], probe.groups)
        log.info(
            "cached the frozen part's output at layer %s: %s per image", boundary, features["val"].shape[1:]
        )

    train_data = _dataset(variants, train.groups, train.weights, batch_size, True, seed, targets)
    head_trainer, head_train_data, head_val_data, head_probe = trainer, train_data, val_data, probe_inputs
    if pooled_head and boundary is not None and feature_cache is not None:
        pooled = _pooled_features(
            feature_cache, model, boundary, backbone, image_size, features, train, val, probe
        )
        inputs = keras.Input(pooled["val"].shape[1:], name="pooled")
        # the model's own head layers: training them here trains the model
        head_trainer = keras.Model(
            inputs, model.get_layer("age_group")(model.get_layer("head_dropout")(inputs))
        )
        head_train_data = _dataset(
            pooled["train"], train.groups, train.weights, batch_size, True, seed, targets
        )
        head_val_data = _dataset(pooled["val"], val.groups, val.weights, batch_size, False, seed)
        head_probe = probe and (pooled["probe"], probe.groups)
    phase1_weights = checkpoint_dir / "phase1_done.weights.h5"
    if phase1_weights.is_file():
        model.load_weights(phase1_weights)  # resume: phase 1 finished in an earlier, interrupted run
        records.extend(json.loads((checkpoint_dir / "phase1_history.json").read_text()))
        log.info("resumed after phase 1 from %s", phase1_weights)
    else:
        _compile(head_trainer, head_learning_rate, jit)
        callback = _EpochCallback.make("head", 0, records, head_probe, on_epoch)
        epochs = _fit(
            head_trainer, head_train_data, head_val_data, head_epochs, patience, checkpoint_dir / "phase1",
            [callback],
        )  # fmt: skip
        images_seen += epochs * len(train.groups)
        model.save_weights(phase1_weights)
        (checkpoint_dir / "phase1_history.json").write_text(json.dumps(records))

    soup = None
    if unfreeze_layers > 0 and finetune_epochs > 0:
        unfreeze(model, backbone, unfreeze_layers)
        for run in range(finetune_runs):
            finished = checkpoint_dir / f"phase2_{run}_history.json"
            if finished.is_file():  # resume: this fine-tuning run ended before the interruption
                records[:] = json.loads(finished.read_text())
                continue
            # Every run starts where phase 1 ended and differs only in its data order (its seed),
            # so the runs stay close enough for their weights to be averaged in the soup.
            model.load_weights(phase1_weights)
            _compile(trainer, finetune_learning_rate, jit)
            callbacks = [_EpochCallback.make("finetune", len(records), records, probe_inputs, on_epoch)]
            if weight_soup:
                callbacks.append(_SnapshotCallback.make(checkpoint_dir / "soup", len(records)))
            run_data = train_data if run == 0 else _dataset(
                variants, train.groups, train.weights, batch_size, True, seed + run, targets
            )  # fmt: skip
            epochs = _fit(
                trainer, run_data, val_data, finetune_epochs, patience, checkpoint_dir / f"phase2_{run}",
                callbacks,
            )  # fmt: skip
            images_seen += epochs * len(train.groups)
            with atomic_path(finished) as path:
                path.write_text(json.dumps(records))
        if weight_soup:
            soup = greedy_soup(trainer, _load_snapshots(checkpoint_dir / "soup"), val_data)
            log.info(
                "weight soup of epochs %s: validation accuracy %.4f", soup["epochs"], soup["val_accuracy"]
            )
    if not keep_checkpoints:  # finished: nothing left to resume
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return _result(model, records, boundary, started, images_seen, soup)


# the versions of a training image, in the order `_cached_features` lists them (the last two with realign)
TRAIN_KINDS = ["plain", "mirror", "realigned", "realigned_mirror"]


def _cached_features(
    cache, bottom, boundary, backbone, image_size, train, val, probe, batch_size, realign=False
) -> dict:
    """Frozen-part outputs for every split, each image computed once per cut and reused by path.

    Keyed by file path, so trials that rebalance the training split differently still share
    the features of the images they have in common. `features["train"]` lists the training
    rows' versions: plain and mirrored, and with `realign` re-cut and re-cut mirrored.
    """
    cache = {} if cache is None else cache
    store = cache.setdefault((backbone, image_size, boundary), {"row": {}})
    kinds = TRAIN_KINDS if realign else TRAIN_KINDS[:2]
    features = {
        "train": [_gather(store, bottom, train, batch_size, kind) for kind in kinds],
        "val": _gather(store, bottom, val, batch_size, "plain"),
    }
    if probe is not None:
        features["probe"] = _gather(store, bottom, probe, batch_size, "plain")
    return features


def _pooled_features(cache, model, boundary, backbone, image_size, features, train, val, probe) -> dict:
    """The pretrained network's pooled features (the head's input) for `features` (cut at
    `boundary`), each image and kind computed once and kept in `cache` for later trials.

    Valid only while every layer between `boundary` and the pooling holds its pretrained
    weights: call it before training.
    """
    import keras

    store = cache.setdefault((backbone, image_size, "pooled"), {})
    pool = keras.Model(model.get_layer(boundary).output, model.get_layer("features").output)

    def pooled(split: SplitData, values: np.ndarray, kind: str) -> np.ndarray:
        paths = split.table["path"].tolist()
        missing = [index for index, path in enumerate(paths) if (path, kind) not in store]
        if missing:
            vectors = pool.predict(values[missing].astype(np.float32), batch_size=256, verbose=0)
            for index, vector in zip(missing, vectors, strict=True):
                store[(paths[index], kind)] = vector
        return np.stack([store[(path, kind)] for path in paths])

    result = {
        "train": [
            pooled(train, values, kind) for values, kind in zip(features["train"], TRAIN_KINDS, strict=False)
        ],
        "val": pooled(val, features["val"], "plain"),
    }
    if probe is not None:
        result["probe"] = pooled(probe, features["probe"], "plain")
    return result


def _recut(store: dict, paths: list[str], chips: np.ndarray) -> np.ndarray:
    """Re-cut chips for these paths, each computed once and kept for the other kinds that need it."""
    recut = store.setdefault("recut", {})
    todo = [index for index, path in enumerate(paths) if path not in recut]
    if todo:
        for index, chip in zip(todo, _realigned(chips[todo]), strict=True):
            recut[paths[index]] = chip
    return np.stack([recut[path] for path in paths])


def _realigned(chips: np.ndarray) -> np.ndarray:
    from agerange.faces import realign_chips

    started = time.monotonic()
    realigned, recut = realign_chips(chips)
    seconds = time.monotonic() - started
    log.info("re-cut %d of %d chips the way predict cuts faces, in %.0f s", recut, len(chips), seconds)
    return realigned


def _gather(store: dict, bottom, split: SplitData, batch_size: int, kind: str) -> np.ndarray:
    """Features of a split's rows, computing only the images (of this kind) not seen before."""
    rows = store["row"]
    paths = split.table["path"].tolist()
    first_of = {}
    for index, path in enumerate(paths):
        first_of.setdefault(path, index)
    missing = [path for path in first_of if (path, kind) not in rows]
    blocks = store.setdefault(kind, [])
    if missing:
        chips = split.chips[[first_of[path] for path in missing]]
        if kind.startswith("realigned"):
            chips = _recut(store, missing, chips)
        computed = _compute_features(bottom, chips, batch_size, mirror=kind.endswith("mirror"))
        offset = sum(len(block) for block in blocks)
        blocks.append(computed)
        for position, path in enumerate(missing):
            rows[(path, kind)] = offset + position
    every = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    store[kind] = [every]
    return every[[rows[(path, kind)] for path in paths]]


def _result(model, records, boundary, started, images_seen, soup=None) -> TrainResult:
    seconds = time.monotonic() - started
    return TrainResult(
        model=model,
        history=pd.DataFrame(records),
        boundary=boundary,
        seconds=seconds,
        images_per_second=images_seen / seconds if seconds else 0.0,
        soup=soup,
    )


def probe_rows(table: pd.DataFrame, size: int = 100, seed: int = 0) -> pd.DataFrame:
    """A fixed sample of rows, the same for every run with the same data and seed."""
    return table.sort_values("path").sample(n=min(size, len(table)), random_state=seed)


def train_members(
    members: int, checkpoint_dir: Path, seed: int, on_epoch: EpochHook | None = None, **settings
):
    """`train` repeated `members` times with seeds seed, seed + 1000, ... (head initialisation,
    data order), then combined into one model that averages their probabilities
    (`model.ensemble_classifier`): a deep ensemble, whose members err on different faces.

    The frozen part's cached features are computed once and shared. A member that finished
    before an interruption is loaded from `checkpoint_dir`, not trained again. The history
    numbers epochs on from one member to the next (its `member` column says whose), and the
    result's soup entry holds the ensemble's validation accuracy.
    """
    import keras

    from agerange.model import ensemble_classifier

    if members == 1:
        return train(checkpoint_dir=checkpoint_dir, seed=seed, on_epoch=on_epoch, **settings)
    settings.setdefault("feature_cache", {})
    models, histories, results = [], [], []
    for member in range(members):
        done = checkpoint_dir / f"member_{member}_done"
        offset = int(histories[-1]["epoch"].max()) if histories else 0
        if not done.is_dir():

            def shifted(phase, epoch, metrics, offset=offset):
                if on_epoch is not None:
                    on_epoch(phase, epoch + offset, metrics)

            result = train(
                checkpoint_dir=checkpoint_dir / f"member_{member}", seed=seed + 1000 * member,
                on_epoch=shifted, keep_checkpoints=True, **settings,
            )  # fmt: skip
            with atomic_path(done) as folder:
                folder.mkdir()
                result.model.save(folder / "model.keras")
                result.history.to_csv(folder / "history.csv", index=False)
                summary = {key: getattr(result, key) for key in ("boundary", "seconds", "images_per_second")}
                soup = result.soup and {**result.soup, "epochs": [e + offset for e in result.soup["epochs"]]}
                (folder / "result.json").write_text(json.dumps({**summary, "soup": soup}))
            # only now: a run killed before `done` was written resumes from these
            shutil.rmtree(checkpoint_dir / f"member_{member}", ignore_errors=True)
        models.append(keras.models.load_model(done / "model.keras", compile=False))
        history = pd.read_csv(done / "history.csv").assign(member=member)
        history["epoch"] += offset
        histories.append(history)
        results.append(json.loads((done / "result.json").read_text()))
        log.info("ensemble member %d of %d ready", member + 1, members)

    # the frozen part below the cut is the same pretrained network in every member: run it once
    model = ensemble_classifier(models, shared_until=results[0]["boundary"])
    val = settings["val"]
    predicted = model.predict(val.chips.astype(np.float32), batch_size=settings["batch_size"], verbose=0)
    accuracy = float((predicted.argmax(axis=1) == val.groups).mean())
    log.info("ensemble of %d members: validation accuracy %.4f", members, accuracy)
    seconds = sum(r["seconds"] for r in results)
    soup_epochs = [epoch for r in results if r["soup"] for epoch in r["soup"]["epochs"]]
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    return TrainResult(
        model=model,
        history=pd.concat(histories, ignore_index=True),
        boundary=results[0]["boundary"],
        seconds=seconds,
        images_per_second=sum(r["images_per_second"] * r["seconds"] for r in results) / seconds,
        soup={"epochs": soup_epochs, "val_accuracy": accuracy, "members": members},
    )
