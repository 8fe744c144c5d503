"""The weight soup: every fine-tuning epoch's weights saved, then the ones that help averaged."""

from pathlib import Path

import numpy as np

from agerange.files import atomic_path

Snapshot = tuple[int, float, list[np.ndarray]]  # (epoch, val accuracy, weights)


def snapshot_callback(folder: Path, offset: int):
    """A Keras callback that saves the trained weights after every epoch, for the weight soup."""
    import keras

    class SnapshotCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            # On disk, not in memory: an interrupted fine-tuning resumes with its earlier epochs;
            # atomic, so a kill mid-write leaves no half snapshot to break that resume.
            accuracy = float((logs or {})["val_accuracy"])
            with atomic_path(folder / f"epoch_{offset + epoch + 1:03d}.npz") as path:
                np.savez(path, accuracy, *self.model.get_weights())

    return SnapshotCallback()


def load_snapshots(folder: Path) -> list[Snapshot]:
    """(epoch, val accuracy, weights) of every saved snapshot, best val accuracy first."""
    snapshots = []
    for path in sorted(folder.glob("epoch_*.npz")):
        with np.load(path) as arrays:
            values = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
        snapshots.append((int(path.stem.split("_")[1]), float(values[0]), values[1:]))
    return sorted(snapshots, key=lambda snapshot: -snapshot[1])


def greedy_soup(trainer, snapshots: list[Snapshot], val_data) -> dict:
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
        return validation_accuracy(trainer, val_data)

    soup = snapshots[:1]
    best = accuracy(mean(soup))
    for candidate in snapshots[1:]:
        score = accuracy(mean([*soup, candidate]))
        if score >= best:
            soup, best = [*soup, candidate], score
    trainer.set_weights(mean(soup))
    return {"epochs": sorted(epoch for epoch, _, _ in soup), "val_accuracy": best}


def validation_accuracy(trainer, val_data) -> float:
    """Exact age-group accuracy of the weights `trainer` holds now, on the validation data."""
    return float(trainer.evaluate(val_data, verbose=0, return_dict=True)["accuracy"])
