"""The headline figures: picked from the stages' reports, the champion named either way."""

from agerange.headline import FIGURES, headline


def _reports(alias: str) -> dict:
    return {
        "ingest": {"images_out": 600, "quarantined": 13},
        "evaluation": {
            "test": {"accuracy": 0.5, "within_one": 0.9, "mae_years": 6.0},
            "val": {"accuracy": 0.6},
        },
        "predict_path": {"test": {"accuracy": 0.49, "faces_found": 1.0}},
        "registration": {"version": 3, "alias": alias, "champion_version_before": 2},
        "drift": {"new_photos": {"drift": True}, "control": {"drift": False}},
    }


def test_the_headline_picks_each_figure_and_leaves_out_what_a_report_lacks():
    figures = headline(_reports("champion"))
    assert (
        figures["test_accuracy"] == 0.5 and figures["images"] == 600 and figures["new_photos_drift"] is True
    )
    assert "test_ethnicity_gap" not in figures  # not in this evaluation report: left out, not None
    assert figures["champion_version"] == 3 and len(figures) <= len(FIGURES) + 1


def test_a_challenger_leaves_the_earlier_champion_in_the_headline():
    assert headline(_reports("challenger"))["champion_version"] == 2
