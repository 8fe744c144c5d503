"""The model card: what a registered model is for, what it was trained on, how right it is, and
where it fails. Written by the register stage, logged with the version and set as its description."""

from typing import Any

import pandas as pd

from agerange.metrics import proportion_interval


def intended_use(test_accuracy: float | None) -> str:
    """What the model is for and not for; the share of wrong answers is the test split's own."""
    wrong = (
        f"{100 * (1 - float(test_accuracy)):.0f}% of exact answers on the test split are wrong"
        if test_accuracy is not None
        else "many exact answers are wrong"
    )
    return (
        "Estimate the age range of each face in a photo (ten groups, Baby to Senior, or the ranges set "
        "in package.ranges, such as FairFace's) for collections and aggregate statistics. Not for "
        f"decisions about one person (age checks, access, hiring): {wrong}, and errors are larger for "
        "some groups and conditions (below)."
    )


HEAD_WORDS = {
    "groups": "predicting the ten age groups' probabilities",
    "ages": "predicting a distribution over years of age (groups and ranges are its sums)",
}


def _years(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _percent(value: Any) -> str:
    return f"{100 * float(value):.1f}%" if value is not None else "-"


def model_card(
    info: dict[str, Any],
    evaluation: dict[str, dict[str, Any]],
    predict_path: dict[str, dict[str, Any]],
    conditions: pd.DataFrame | None,
    version: int | None = None,
) -> str:
    """Markdown: intended use, model, data, every headline figure and the known failure conditions."""
    val, test = evaluation.get("val", {}), evaluation.get("test", {})
    lines = [
        f"# agerange model card{f' (version {version})' if version is not None else ''}",
        "", "## Intended use", "", intended_use(test.get("accuracy")), "",
        "## Model", "",
        f"{info.get('backbone')} at {info.get('image_size')} px, "
        f"{info.get('ensemble_members', 1)} member(s), "
        f"{HEAD_WORDS.get(info.get('head', 'groups'), '')}, "
        "fine-tuned in two phases on UTKFace chips with real-photo variants; face detection BlazeFace, "
        f"alignment like a UTKFace chip, TFLite classifier {_mirror_words(info.get('predict', {}))}.",
        "", "## Data", "",
        "UTKFace (aligned 200 x 200 chips, ages from file names), split by age group x ethnicity; "
        "models are chosen on the validation split (and the labelled new photos), the test split "
        "is reported once. Labels are noisy (some adults labelled 1 or 2 years old).",
        "", "## Figures", "",
        "| set | exact group | within one | MAE (years): expected / answered age | ethnicity gap "
        "| worst ethnicity |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, figures in (("validation", val), ("test", test)):
        lines.append(
            f"| {name} | {_percent(figures.get('accuracy'))} | {_percent(figures.get('within_one'))} | "
            f"{_years(figures.get('mae_years'))} / {_years(figures.get('answer_mae_years'))} | "
            f"{_percent(figures.get('ethnicity_accuracy_gap'))} | "
            f"{_percent(figures.get('ethnicity_worst_accuracy'))} |"
        )
    path_test = predict_path.get("test", {})
    lines.append(
        f"| test through the predict path | {_percent(path_test.get('accuracy'))} | "
        f"{_percent(path_test.get('within_one'))} | - | - | - |"
    )
    if new := predict_path.get("new_photos"):
        photos = int(new.get("photos_with_face") or 0)
        interval = "; in brackets the 95% interval" if photos else ""
        lines.append(
            f"| new photos ({new.get('labelled_photos')} labelled real photos, their age ranges{interval}) | "
            f"{_with_interval(new.get('range_accuracy'), photos)} | "
            f"{_with_interval(new.get('range_within_one'), photos)} | - | - | - |"
        )
    lines += _gap_note(val, test)
    lines += _served_variant(info.get("variant"), info.get("layers_in_float"))
    lines += ["", "## Known failure conditions (test split)", ""]
    if conditions is not None and len(conditions):
        worst = conditions.sort_values("drop", ascending=False).head(5)
        lines += [
            f"- {row.condition} {_where(row)}: {_percent(row.accuracy)} exact "
            f"({_percent(row.drop)} below the split's), {row.images} images"
            for row in worst.itertuples()
        ]
    lines += [
        "- real photos unlike UTKFace chips (see the new-photos row): lighting, blur, compression, "
        "small faces and head turns; several faces in a photo are each answered",
        "- make-up, glasses, head coverings and occlusions are not measured separately yet",
    ]
    return "\n".join(lines) + "\n"


def _with_interval(share: Any, photos: int) -> str:
    """A share with its 95% interval over `photos` (`metrics.proportion_interval`)."""
    if share is None or photos <= 0:
        return _percent(share)
    low, high = proportion_interval(float(share), photos)
    return f"{_percent(share)} ({100 * low:.0f}-{100 * high:.0f}%)"


def _gap_note(val: dict[str, Any], test: dict[str, Any]) -> list[str]:
    """What the ethnicity gaps would be by chance alone (`evaluate.gap_by_chance`)."""
    sides = [(name, figures) for name, figures in (("validation", val), ("test", test))
             if "ethnicity_gap_by_chance" in figures]  # fmt: skip
    if not sides:
        return []
    parts = [
        f"{_percent(figures['ethnicity_gap_by_chance'])} on {name} (the measured gap's p-value "
        f"{figures['ethnicity_gap_p_value']:.2f})"
        for name, figures in sides
    ]
    return [
        "",
        "A model exactly as accurate for every ethnicity would still show a gap, by sampling alone, "
        "on these splits' group sizes: " + "; ".join(parts) + ". The p-value is how often equal "
        "accuracy would show a gap at least as large as the measured one: below about 0.05 the gap "
        "is unlikely to be sampling alone.",
    ]


def _mirror_words(predict: dict[str, Any]) -> str:
    """How the served model uses the mirror image (its saved `package` settings)."""
    if not predict.get("flip", True):
        return "on each face once, without the mirror image"
    if predict.get("flip_margin") is None:
        return "averaged with the mirror image of every face"
    return (
        "averaged with the mirror image where its answer leads the runner-up by less than "
        f"{predict['flip_margin']} (`package.flip_margin`)"
    )


def _served_variant(choice: dict[str, Any] | None, layers_in_float: list[str] | None = None) -> list[str]:
    """Which packaged variant is served (int8, the distilled student), every variant's figures
    through the predict path (validation, and the labelled new photos' ranges when measured),
    and the layers the served int8 variant computes in float; nothing for a model packaged
    without a choice."""
    if not choice:
        return []
    variants = choice.get("val", {})
    keys = ["accuracy", "within_one"]
    header = "| variant | validation exact group | within one |"
    if any("new_photos_range_accuracy" in figures for figures in variants.values()):
        keys += ["new_photos_range_accuracy", "new_photos_range_within_one"]
        header += " new photos: range exact | within one |"
    lines = [
        "", "## Served variant", "",
        f"Served: **{choice['chosen']}**. Rule: {choice['rule']}. The validation and test rows above "
        "are the trained model in Keras; the predict-path rows are the served variant.",
        "",
        header, "|---" * (len(keys) + 1) + "|",
    ]  # fmt: skip
    for name, figures in variants.items():
        lines.append(f"| {name} | " + " | ".join(_percent(figures.get(key)) for key in keys) + " |")
    if layers_in_float:
        lines += ["", f"The int8 classifier computes these layers in float: {', '.join(layers_in_float)}."]
    return lines


def _where(row) -> str:
    """A condition bin in words: its range, or 'where no face was found' (it has none)."""
    if pd.isna(row.low):
        return "where the detector found no face"
    return f"between {row.low:.3g} and {row.high:.3g}"
