"""Labels the model should not learn from: suspected wrong ages in the training split.

UTKFace's ages come from file names and some are wrong (adults labelled 1 or 2 years old). The
check is confident learning (cleanlab): a simple classifier on the pretrained network's pooled
features predicts each training image's age group out of fold (it never sees the image it
predicts), and cleanlab flags the images whose label disagrees with what the rest of the data
says, beyond the noise it estimates per group. Neighbouring groups are often honestly ambiguous
(a 24-year-old looks 26), so only labels `min_group_distance` or more groups from the suggested
one are reported. Only the training split is checked: validation and test are never filtered,
so figures stay comparable.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from agerange.inference import group_name
from agerange.model import build_classifier

log = logging.getLogger(__name__)

ISSUE_COLUMNS = ["path", "age", "age_group", "suggested_group", "label_probability", "group_distance"]


def pooled_features(
    chips: np.ndarray, backbone: str, weights_dir: Path, weights_sha256: str | None
) -> np.ndarray:
    """The pretrained backbone's pooled features of uint8 chips (N, S, S, 3), float32 (N, D)."""
    import keras

    model = build_classifier(backbone, chips.shape[1], Path(weights_dir), 0.0, weights_sha256)
    features = keras.Model(model.input, model.get_layer("features").output)
    outputs = [np.asarray(features(chips[i : i + 256].astype(np.float32))) for i in range(0, len(chips), 256)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def out_of_fold_probabilities(features: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Age-group probabilities of each row from a logistic regression trained on the other folds.

    Returns:
        float (N, number of groups seen), columns in group order 0, 1, ...
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    groups = np.asarray(groups)
    classes = int(groups.max()) + 1
    probabilities = np.zeros((len(groups), classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(features, groups):
        # 128 principal components: the regression converges in seconds on a 2-core CPU
        components = PCA(
            min(128, len(fit_rows), features.shape[1]), random_state=seed
        )  # a fold fits on fewer rows
        model = make_pipeline(StandardScaler(), components, LogisticRegression(C=0.05, max_iter=1000))
        model.fit(features[fit_rows], groups[fit_rows])
        probabilities[np.ix_(held_rows, model.classes_)] = model.predict_proba(features[held_rows])
    return probabilities


def suspected_label_errors(
    table: pd.DataFrame, probabilities: np.ndarray, min_group_distance: int
) -> pd.DataFrame:
    """Rows whose age label cleanlab finds doubtful and that are at least `min_group_distance`
    groups from the suggested group, most doubtful first (lowest probability of the given label).

    Args:
        table: the training rows (path, age, age_group).
        probabilities: out-of-fold group probabilities, one row per table row.
    """
    from cleanlab.filter import find_label_issues

    groups = table["age_group"].to_numpy()
    flagged = find_label_issues(groups, probabilities, n_jobs=1)
    suggested = probabilities.argmax(axis=1)
    issues = table.assign(
        suggested_group=suggested,
        label_probability=probabilities[np.arange(len(groups)), groups],
        group_distance=np.abs(suggested - groups),
    )[flagged & (np.abs(suggested - groups) >= min_group_distance)]
    return issues.sort_values("label_probability")[ISSUE_COLUMNS].reset_index(drop=True)


def contact_sheet(issues: pd.DataFrame, images_dir: Path, path: Path, count: int = 40) -> None:
    """A grid of the most doubtful images, each captioned with its label and the suggestion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from agerange.files import atomic_path

    shown = issues.head(count)
    columns = 8
    rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.8, rows * 2.1), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, row in zip(axes.flat, shown.itertuples(), strict=False):
        axis.imshow(Image.open(Path(images_dir) / row.path).convert("RGB"))
        suggested = group_name(int(row.suggested_group)).split(" (")[0]
        axis.set_title(f"labelled {row.age}\nlooks {suggested}", fontsize=7)
    figure.suptitle(f"Suspected label errors in the training split ({len(issues)}; most doubtful first)")
    figure.tight_layout()
    with atomic_path(Path(path)) as temporary:
        figure.savefig(temporary, format="png", dpi=80)
    plt.close(figure)
