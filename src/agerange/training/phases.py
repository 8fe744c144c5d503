"""The phases of a training, each a named function that owns its resume marker.

`train_head` trains the new head on a frozen backbone, `fine_tune` then trains the top layers
(one or more runs from the end of phase 1, ending in the weight soup), and `train_from_scratch`
is the one phase of a backbone without pretrained weights. Every epoch is checkpointed, and a
phase that finished before an interruption is not run again.
"""

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from agerange.config import TrainConfig
from agerange.files import atomic_path
from agerange.inference import BIN_AGES, decode_probabilities
from agerange.labels import AGE_BINS, BINS_TO_GROUPS
from agerange.metrics import exact_accuracy
from agerange.model import unfreeze
from agerange.training.data import array_batches
from agerange.training.feeds import Feed
from agerange.training.soup import greedy_soup, load_snapshots, snapshot_callback, validation_accuracy

log = logging.getLogger(__name__)

EpochHook = Callable[[str, int, dict[str, float]], None]  # (phase, global epoch, metrics)


def within_one(y_true, y_pred):
    """1 where the prediction is at most one age group away, per row (a Keras metric function:
    Keras averages the rows, so a short last batch counts by its rows, not as a whole batch)."""
    from keras import ops

    distance = ops.abs(ops.argmax(_groups(y_true), axis=-1) - ops.argmax(_groups(y_pred), axis=-1))
    return ops.cast(distance <= 1, "float32")


def group_accuracy(y_true, y_pred):
    """1 where the most likely age group is the target's, per row (a Keras metric function)."""
    from keras import ops

    hits = ops.argmax(_groups(y_true), axis=-1) == ops.argmax(_groups(y_pred), axis=-1)
    return ops.cast(hits, "float32")


def _groups(outputs):
    """Age-group probabilities of a batch from either head (the distribution head's bins summed)."""
    from keras import ops

    if outputs.shape[-1] != AGE_BINS:
        return outputs
    return ops.matmul(ops.cast(outputs, "float32"), ops.convert_to_tensor(BINS_TO_GROUPS))


def distribution_loss(age_loss_weight: float):
    """The distribution head's loss (DLDL-v2): cross-entropy to the target distribution over years,
    plus `age_loss_weight` x |expected age - the target's expected age| in tens of years."""
    import keras
    from keras import ops

    ages = ops.convert_to_tensor(BIN_AGES)
    cross_entropy = keras.losses.CategoricalCrossentropy(reduction=None)

    def loss(y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        error = ops.abs(ops.sum(y_pred * ages, axis=-1) - ops.sum(y_true * ages, axis=-1)) / 10.0
        return cross_entropy(y_true, y_pred) + age_loss_weight * error

    return loss


def compile_for(trainer, learning_rate: float, jit: bool, age_loss_weight: float = 1.0) -> None:
    """Adam on the soft-target cross-entropy (and, for the distribution head, the expected age's
    error), with exact and within-one age-group accuracy as metrics."""
    import keras

    ages_head = trainer.output_shape[-1] == AGE_BINS
    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=distribution_loss(age_loss_weight) if ages_head else keras.losses.CategoricalCrossentropy(),
        metrics=[
            keras.metrics.MeanMetricWrapper(group_accuracy, name="accuracy")
            if ages_head
            else keras.metrics.CategoricalAccuracy(name="accuracy"),
            within_one,
        ],
        jit_compile=jit,
    )


def compiled_to_evaluate(trainer, config: TrainConfig, jit: bool):
    """The trainer, compiled if it is not: a training resumed after the phase that compiled it
    (its checkpoints say the phase ended) must still be evaluated (the soup, the final score)."""
    if not trainer.compiled:
        compile_for(trainer, config.finetune_learning_rate, jit, config.age_loss_weight)
    return trainer


def validation_score(feed: Feed, config: TrainConfig, jit: bool) -> float:
    """Validation accuracy of the weights the feed's trainer holds now (`compiled_to_evaluate`)."""
    return validation_accuracy(compiled_to_evaluate(feed.trainer, config, jit), feed.val_data)


def epoch_callback(
    phase: str, offset: int, planned: int, records: list, probe, hook, label: str, stops_early: bool = True
):
    """A Keras callback: records each epoch, predicts the probe set, calls the tracking hook and
    logs one line saying whose epoch it is (`label`, phase) and how long the phase may still take."""
    import keras

    class EpochCallback(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            row = {"phase": phase, "epoch": offset + epoch + 1}
            row.update({key: float(value) for key, value in (logs or {}).items()})
            if probe is not None:
                inputs, groups = probe
                predicted, _ = decode_probabilities(self.model.predict(array_batches(inputs, 32), verbose=0))
                row["probe_accuracy"] = exact_accuracy(predicted, groups)
            records.append(row)
            if hook is not None:
                hook(phase, row["epoch"], {k: v for k, v in row.items() if k not in ("phase", "epoch")})
            per_epoch = (time.monotonic() - self.started) / (epoch + 1)
            sooner = " (early stopping may end it sooner)" if stops_early else ""
            log.info(
                "%s%s epoch %d/%d: loss %.4f, accuracy %.4f, val_accuracy %.4f; %.0f s/epoch, "
                "this phase ends within %.1f min%s",
                f"{label} " if label else "", phase, epoch + 1, planned, row.get("loss", float("nan")),
                row.get("accuracy", float("nan")), row.get("val_accuracy", float("nan")), per_epoch,
                per_epoch * (planned - epoch - 1) / 60, sooner,
            )  # fmt: skip

    return EpochCallback()


def fit(
    trainer, train_data, val_data, epochs: int, patience: int | None, checkpoint_dir: Path, callbacks
) -> int:
    """Fit with an epoch checkpoint to resume from and, unless `patience` is None, early stopping
    (best weights restored)."""
    import keras

    if epochs <= 0:
        return 0
    # BackupAndRestore resumes by setting the model's initial epoch, and Keras (3.x) never resets
    # it: without this, every later fit on the same model (phase 2 after a resumed phase 1, the
    # next fine-tuning run) would skip the epochs the resumed one had done.
    trainer._initial_epoch = None
    stopping = [] if patience is None else [
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=patience, restore_best_weights=True
        )
    ]  # fmt: skip
    history = trainer.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        shuffle=False,  # the dataset is already shuffled (make_dataset); Keras would only warn
        verbose=0,  # the epoch callback logs one line per epoch instead
        callbacks=[
            keras.callbacks.BackupAndRestore(str(checkpoint_dir), delete_checkpoint=True),
            *stopping,
            *callbacks,
        ],
    )
    return len(history.epoch)


def train_from_scratch(feed: Feed, config: TrainConfig, options, records: list) -> int:
    """One phase for a backbone without pretrained weights; returns the epochs run."""
    compile_for(feed.trainer, config.head_learning_rate, options.jit, config.age_loss_weight)
    planned = config.head_epochs + config.finetune_epochs
    callback = epoch_callback("train", 0, planned, records, feed.probe, options.on_epoch, options.label)
    return fit(
        feed.trainer, feed.train_data, feed.val_data, planned, config.patience,
        Path(options.checkpoint_dir) / "phase1", [callback],
    )  # fmt: skip


def phase_one_weights(checkpoint_dir: Path) -> Path:
    """Where phase 1's final weights live: its resume marker, and where every fine-tuning run starts."""
    return Path(checkpoint_dir) / "phase1_done.weights.h5"


def train_head(model, feed: Feed, config: TrainConfig, options, records: list) -> int:
    """Phase 1: the head on the frozen backbone; returns the epochs run (0 when resumed)."""
    checkpoint_dir = Path(options.checkpoint_dir)
    marker = phase_one_weights(checkpoint_dir)
    if marker.is_file():
        model.load_weights(marker)  # resume: phase 1 finished in an earlier, interrupted run
        records.extend(json.loads((checkpoint_dir / "phase1_history.json").read_text()))
        log.info("resumed after phase 1 from %s", marker)
        return 0
    compile_for(feed.trainer, config.head_learning_rate, options.jit, config.age_loss_weight)
    callback = epoch_callback(
        "head", 0, config.head_epochs, records, feed.probe, options.on_epoch, options.label
    )
    epochs = fit(
        feed.trainer, feed.train_data, feed.val_data, config.head_epochs, config.patience,
        checkpoint_dir / "phase1", [callback],
    )  # fmt: skip
    # the history first, then the marker in one rename: a kill in between or during the save
    # leaves no marker, and phase 1 simply runs again
    (checkpoint_dir / "phase1_history.json").write_text(json.dumps(records))
    with atomic_path(marker) as path:
        model.save_weights(path)
    return epochs


def fine_tune(model, feed: Feed, config: TrainConfig, options, records: list) -> tuple[int, dict | None]:
    """Phase 2: the top `unfreeze_layers` layers, in `finetune_runs` runs from the end of phase 1,
    then the weight soup of their epochs. Returns the epochs run and the soup (or None)."""
    checkpoint_dir = Path(options.checkpoint_dir)
    unfreeze(model, config.backbone, config.unfreeze_layers)
    epochs, phase_one = 0, max((row["epoch"] for row in records), default=0)  # phase 1's last epoch
    for run in range(config.finetune_runs):
        finished = checkpoint_dir / f"phase2_{run}_history.json"
        # without the soup the one run's own weights are the model (with it, the soup's snapshots)
        run_weights = checkpoint_dir / f"phase2_{run}_done.weights.h5"
        if finished.is_file():  # resume: this fine-tuning run ended before the interruption
            records[:] = json.loads(finished.read_text())
            if not config.weight_soup:
                model.load_weights(run_weights)
            continue
        # A run's epochs are numbered after phase 1's last and the planned epochs of the runs
        # before it, not after the records so far: an interruption loses the record of the epoch
        # it stopped in, and the numbers (MLflow steps, soup snapshot names) must not shift.
        offset = phase_one + run * config.finetune_epochs
        # Every run starts where phase 1 ended and differs only in its data order (its seed),
        # so the runs stay close enough for their weights to be averaged in the soup.
        model.load_weights(phase_one_weights(checkpoint_dir))
        compile_for(feed.trainer, config.finetune_learning_rate, options.jit, config.age_loss_weight)
        label = options.label + (f" run {run + 1}/{config.finetune_runs}" if config.finetune_runs > 1 else "")
        # With the soup every epoch runs: the soup chooses among them on validation, and early
        # stopping on that noisy figure cut one ensemble member short at 8 of 15 epochs (soup
        # 0.577, where the same recipe's members ran all 15 to 0.591 and 0.592)
        patience = None if config.weight_soup else config.patience
        callbacks = [
            epoch_callback(
                "finetune", offset, config.finetune_epochs, records, feed.probe, options.on_epoch, label,
                stops_early=patience is not None,
            )
        ]  # fmt: skip
        if config.weight_soup:
            callbacks.append(snapshot_callback(checkpoint_dir / "soup", offset))
        run_data = feed.train_data if run == 0 else feed.reshuffled(config.seed + run)
        epochs += fit(
            feed.trainer, run_data, feed.val_data, config.finetune_epochs, patience,
            checkpoint_dir / f"phase2_{run}", callbacks,
        )  # fmt: skip
        if not config.weight_soup:  # the weights before the marker: a kill between them reruns the run
            with atomic_path(run_weights) as path:
                model.save_weights(path)
        with atomic_path(finished) as path:
            path.write_text(json.dumps(records))
    if not config.weight_soup:
        return epochs, None
    trainer = compiled_to_evaluate(feed.trainer, config, options.jit)
    soup = greedy_soup(trainer, load_snapshots(checkpoint_dir / "soup"), feed.val_data)
    log.info("weight soup of epochs %s: validation accuracy %.4f", soup["epochs"], soup["val_accuracy"])
    return epochs, soup
