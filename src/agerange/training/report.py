"""What a finished training leaves behind: the model's own settings and a summary of the run."""

from agerange.backbones import get_backbone
from agerange.config import TrainConfig
from agerange.labels import AGE_GROUPS, GROUP_NAMES, group_midpoints
from agerange.training.recipe import TrainResult


def model_info(config: TrainConfig, boundary: str | None) -> dict:
    """Everything needed to use the model without the training code (saved beside it)."""
    backbone = get_backbone(config.backbone)
    return {
        "backbone": backbone.name,
        "image_size": config.image_size,
        "input": "RGB face chip, float32 pixel values 0-255, shape (image_size, image_size, 3)",
        "preprocessing": backbone.preprocessing + " (inside the model)",
        "class_names": list(GROUP_NAMES),
        # groups: the output is the ten groups' probabilities; ages: a distribution over years
        # 0..100 (the last is 100+) whose sums give the groups and any age range
        "head": config.head,
        "age_ranges": [[low, high] for _, low, high in AGE_GROUPS],
        "group_midpoints": list(group_midpoints()),
        "freeze_boundary": boundary,
        "ensemble_members": config.ensemble_members,
    }


def summary(result: TrainResult) -> dict:
    """The train stage's headline figures (data/reports/train.json, and MLflow metrics)."""
    history = result.history
    best_epoch = history["val_accuracy"].idxmax()
    return {
        "best_val_accuracy": result.val_accuracy,
        "best_epoch_val_accuracy": float(history["val_accuracy"].max()),
        "best_epoch_val_within_one": float(history.loc[best_epoch, "val_within_one"]),
        "soup_epochs": len(result.soup["epochs"]) if result.soup else 0,
        "epochs": int(len(history)),
        "train_seconds": round(result.seconds, 1),
        "train_images_per_second": round(result.images_per_second, 1),
    }
