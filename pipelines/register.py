"""DVC stage `register`: put the trained model in the MLflow Model Registry as `agerange`.

`champion` moves to the new version only if it beats the current champion on the metric and
split named in params.yaml (validation by default: models are chosen on validation, never on
test); otherwise the new version becomes `challenger`.
"""

import argparse
import json
from pathlib import Path

from agerange import registry, tracking
from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model", type=Path, required=True, help="the package stage's model folder (with run.json)"
    )
    parser.add_argument("--evaluation", type=Path, required=True, help="the evaluate stage's metrics")
    parser.add_argument(
        "--predict-path", type=Path, help="the package stage's report (its new_photos figures)"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON: version, alias, scores")
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
    print(f"register: {registry.describe_outcome(outcome, settings)}")


if __name__ == "__main__":
    main()
