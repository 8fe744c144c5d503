"""The headline: the twenty-odd figures a reader compares between two commits (`dvc metrics diff`).

Every stage keeps its full report (per-group counts, every drift test's p-value, both splits'
scores); these are picked from them: how right the model is on the test split, through the
predict path and on new photos, how fair it is, whether the photos drifted, which version is the
champion, and how many images it learnt from.
"""

from typing import Any

REPORTS = ("ingest", "evaluation", "predict_path", "registration", "drift")
# headline name -> (report, key path inside it)
FIGURES = {
    "images": ("ingest", "images_out"),
    "quarantined": ("ingest", "quarantined"),
    "test_accuracy": ("evaluation", "test.accuracy"),
    "test_within_one": ("evaluation", "test.within_one"),
    "test_mae_years": ("evaluation", "test.mae_years"),
    # ... of the age `agerange predict` answers beside the group (the expected age's is above)
    "test_answer_mae_years": ("evaluation", "test.answer_mae_years"),
    "test_ethnicity_gap": ("evaluation", "test.ethnicity_accuracy_gap"),
    # ... and the gap a model equally accurate for every ethnicity would show there by chance
    "test_ethnicity_gap_by_chance": ("evaluation", "test.ethnicity_gap_by_chance"),
    "val_accuracy": ("evaluation", "val.accuracy"),
    "predict_path_test_accuracy": ("predict_path", "test.accuracy"),
    "predict_path_faces_found": ("predict_path", "test.faces_found"),
    # this model's (not the champion's) accuracy on the labelled new photos, at their ranges
    "new_photos_range_accuracy": ("predict_path", "new_photos.range_accuracy"),
    "new_photos_range_within_one": ("predict_path", "new_photos.range_within_one"),
    "new_photos_drift": ("drift", "new_photos.drift"),
    "control_drift": ("drift", "control.drift"),
    "fairface_range_accuracy": ("drift", "accuracy.range_accuracy"),
    "fairface_range_within_one": ("drift", "accuracy.range_within_one"),
    "registered_version": ("registration", "version"),
}


def pick(report: dict[str, Any], path: str) -> Any:
    """The value at a dotted key path, or None where the report has no such figure."""
    for key in path.split("."):
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return report


def headline(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of the stages' reports (REPORTS), leaving out those a report lacks."""
    figures = {name: pick(reports[report], path) for name, (report, path) in FIGURES.items()}
    registration = reports["registration"]
    won = registration.get("alias") == "champion"
    figures["champion_version"] = registration["version"] if won else registration["champion_version_before"]
    return {name: value for name, value in figures.items() if value is not None}
