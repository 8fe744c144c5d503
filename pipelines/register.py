"""DVC stage `register`: put the trained model in the MLflow Model Registry as `agerange`.

`champion` moves to the new version only if it beats the current champion on the metric and
split named in params.yaml (validation by default: models are chosen on validation, never on
test); otherwise the new version becomes `challenger`.
"""

import argparse
import json
from pathlib import Path

from agerange import tracking
from agerange.config import fail, load_params, setup_logging
from agerange.files import write_json


def metric_score(values: dict, metric: str, prefix: str = "") -> float:
    """The value of `metric` in `values`; `a+b` is the mean of metrics a and b.

    `prefix` reads the same metrics from a registered version's tags (`val_accuracy`...).
    """
    parts = metric.split("+")
    return sum(float(values[prefix + part]) for part in parts) / len(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model", type=Path, required=True, help="the package stage's model folder (with run.json)"
    )
    parser.add_argument("--evaluation", type=Path, required=True, help="the evaluate stage's metrics")
    parser.add_argument("--out", type=Path, required=True, help="JSON: version, alias, scores")
    args = parser.parse_args()
    setup_logging()
    params = load_params("register")
    reference = tracking.read_run_reference(args.model / "run.json")
    evaluation = json.loads(args.evaluation.read_text())
    split, metric = params["split"], params["metric"]
    try:
        score = metric_score(evaluation[split], metric)
    except KeyError as error:
        fail(f"register.metric '{metric}': {error} is not in {args.evaluation} ({split} split)")
    tags = {
        "run_id": reference["run_id"],
        "git_commit": tracking.git_commit(),
        **{f"{side}_{key}": value for side, values in evaluation.items() for key, value in values.items()},
        **{f"data.{path}": md5 for path, md5 in tracking.data_version().items()},
    }
    outcome = tracking.register(
        reference["model_uri"],
        f"{split}_{metric}".replace("+", "_and_"),  # registry tag names allow no '+'
        score,
        tags,
        params["greater_is_better"],
        params["name"],
        score_from_tags=lambda version_tags: metric_score(version_tags, metric, prefix=f"{split}_"),
    )
    write_json(outcome, args.out)
    before, before_version = outcome["champion_score_before"], outcome["champion_version_before"]
    if before is not None:
        verdict = f"the champion had {before:.4f} (version {before_version})."
    elif before_version is None:
        verdict = "there was no champion before."
    else:
        verdict = f"the champion (version {before_version}) has no {split} {metric} to compare with: kept."
    print(
        f"register: {params['name']} version {outcome['version']} ({split} {metric} {score:.4f}) is now "
        f"'{outcome['alias']}'; {verdict}"
    )


if __name__ == "__main__":
    main()
