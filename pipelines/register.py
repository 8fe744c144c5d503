"""DVC stage `register`: put the trained model in the MLflow Model Registry as `agerange`.

`champion` moves to the new version only if it beats the current champion on the metric and
split named in params.yaml (validation by default: models are chosen on validation, never on
test); otherwise the new version becomes `challenger`.
"""

import argparse
import json
from pathlib import Path

import pandas as pd

from agerange import registry, tracking
from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.files import atomic_path, write_json
from agerange.model_card import model_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model", type=Path, required=True, help="the package stage's model folder (with run.json)"
    )
    parser.add_argument("--evaluation", type=Path, required=True, help="the evaluate stage's metrics")
    parser.add_argument(
        "--predict-path", type=Path, help="the package stage's report (its new_photos figures)"
    )
    parser.add_argument(
        "--conditions", type=Path, help="the evaluate stage's accuracy by image condition (CSV)"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON: version, alias, scores")
    parser.add_argument("--card", type=Path, help="output: the version's model card (markdown)")
    args = parser.parse_args()
    setup_logging()
    try:
        settings = load_section("register")
    except ConfigError as error:
        fail(str(error))
    reference = tracking.read_run_reference(args.model / "run.json")
    tracking.use_tracking_uri(reference["tracking_uri"])
    evaluation = json.loads(args.evaluation.read_text())
    if args.predict_path is not None:  # the labelled new photos, which the metric may include
        evaluation |= {
            k: v for k, v in json.loads(args.predict_path.read_text()).items() if k == "new_photos"
        }
    model_uri, run_id = reference["model_uri"], reference["run_id"]
    try:
        outcome = registry.register_evaluated(model_uri, run_id, evaluation, settings)
    except KeyError as error:
        split = settings.split
        fail(f"register.metric '{settings.metric}': {error} is not in {args.evaluation} ({split} split)")
    write_json(outcome, args.out)
    if args.card is not None:
        _write_card(args, evaluation, outcome["version"], run_id)
    print(f"register: {registry.describe_outcome(outcome, settings)}")


def _write_card(args: argparse.Namespace, evaluation: dict, version: int, run_id: str) -> None:
    """The model card: written beside the registration, set as the version's description, logged."""
    info = json.loads((args.model / "artifacts" / "model_info.json").read_text())
    predict_path = json.loads(args.predict_path.read_text()) if args.predict_path else {}
    conditions = pd.read_csv(args.conditions) if args.conditions and args.conditions.is_file() else None
    card = model_card(info, evaluation, predict_path, conditions, version)
    with atomic_path(args.card) as path:
        path.write_text(card)
    registry.set_description(version, card, load_section("register").name)
    with tracking.start_run("", "", resume_run_id=run_id):
        tracking.log_artifacts([args.card], folder="model_card")


if __name__ == "__main__":
    main()
