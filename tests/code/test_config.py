"""Typed settings: every params.yaml section builds, and a wrong key stops a stage with one line."""

import dataclasses
import json

import pytest
import yaml

from agerange.config import (
    SECTIONS,
    ConfigError,
    load_section,
    read_resolved,
    resolve,
    write_resolved,
)
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"


def _params_with(tmp_path, section: str, **changes):
    params = yaml.safe_load(PARAMS.read_text())
    params[section].update(changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_section_of_params_yaml_builds_its_typed_settings(section):
    settings = load_section(section, PARAMS)
    assert dataclasses.is_dataclass(settings)
    assert set(dataclasses.asdict(settings)) == set(yaml.safe_load(PARAMS.read_text())[section])


def test_an_unknown_key_is_refused_in_one_line_naming_the_key_and_the_file(tmp_path):
    path = _params_with(tmp_path, "train", learning_rte=0.1)
    with pytest.raises(ConfigError) as error:
        load_section("train", path)
    message = str(error.value)
    assert "train.learning_rte" in message and str(path) in message and "\n" not in message


def test_a_missing_key_is_refused(tmp_path):
    params = yaml.safe_load(PARAMS.read_text())
    del params["train"]["seed"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"train\.seed: missing key"):
        load_section("train", tmp_path / "params.yaml")


def test_a_mistyped_value_is_refused_and_yaml_exponents_are_read_as_numbers(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.image_size: expected int, got 'big'"):
        load_section("train", _params_with(tmp_path, "train", image_size="big"))
    # PyYAML reads 1e-3 (no dot) as a string: a float setting still gets the number
    assert load_section("train", _params_with(tmp_path, "train", dropout="1e-1")).dropout == 0.1


def test_a_negative_mirror_margin_is_refused_and_null_mirrors_every_face(tmp_path):
    with pytest.raises(ConfigError, match=r"package\.flip_margin: -0\.1 is negative"):
        load_section("package", _params_with(tmp_path, "package", flip_margin=-0.1))
    assert load_section("package", _params_with(tmp_path, "package", flip_margin=None)).flip_margin is None
    with pytest.raises(ConfigError, match=r"package\.int8_float_layers: -1 is negative"):
        load_section("package", _params_with(tmp_path, "package", int8_float_layers=-1))


def test_the_study_best_and_a_trial_resolve_through_one_function(tmp_path):
    train, rebalance = load_section("train", PARAMS), load_section("rebalance", PARAMS)
    resolved = resolve(train, rebalance, {"dropout": 0.25, "rebalance_strategy": "none"})
    assert resolved.train.dropout == 0.25 and resolved.rebalance.strategy == "none"
    assert resolved.train.seed == train.seed  # everything not tuned is params.yaml's
    with pytest.raises(ConfigError, match="'colour'"):
        resolve(train, rebalance, {"colour": "red"})
    write_resolved(resolved, tmp_path / "training.json")
    assert read_resolved(tmp_path / "training.json") == resolved
    values = json.loads((tmp_path / "training.json").read_text())
    values["train"]["extra"] = 1
    (tmp_path / "training.json").write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=r"train\.extra: unknown key"):
        read_resolved(tmp_path / "training.json")


def test_a_cpu_run_starts_tensorflow_without_its_expected_notices_and_debug_shows_them():
    import os
    import subprocess
    import sys

    script = "from agerange.config import setup_logging; setup_logging(); import tensorflow as tf; "
    script += "tf.config.list_physical_devices()"

    def stderr(**env) -> str:
        environment = {k: v for k, v in os.environ.items() if k != "AGERANGE_LOG_LEVEL"}
        run = subprocess.run([sys.executable, "-c", script], env={**environment, **env}, capture_output=True)
        return run.stderr.decode()

    assert "oneDNN custom operations" not in stderr()
    assert "oneDNN custom operations" in stderr(AGERANGE_LOG_LEVEL="DEBUG")  # nothing hidden when asked


def test_a_tune_space_written_before_the_choices_existed_still_builds():
    from agerange.config import TuneSpace, build

    older = {
        "backbone": ["mobilenet_v2"], "unfreeze_layers": {"mobilenet_v2": [5, 20]},
        "head_learning_rate": [0.001, 0.005], "finetune_learning_rate": [0.0001, 0.001],
        "dropout": [0.0, 0.3], "rebalance_strategy": ["undersample"],
    }  # fmt: skip
    space = build(TuneSpace, older, "params.yaml: tune.space")
    assert space.head == [] and space.augment_variants == [] and space.augment_strength == []


@pytest.mark.parametrize(
    ("section", "key", "value", "reason"),
    [
        ("train", "backbone", "resnet50", "train.backbone: unknown 'resnet50' (valid: mobilenet_v2"),
        ("rebalance", "strategy", "undersampel", "rebalance.strategy: unknown 'undersampel'"),
        ("tune", "sampler", "tpee", "tune.sampler: unknown 'tpee' (valid: tpe, random)"),
    ],
)
def test_the_tune_stage_refuses_an_unknown_choice_in_one_line_before_decoding_anything(
    tmp_path, section, key, value, reason
):
    import subprocess
    import sys

    params = yaml.safe_load(PARAMS.read_text())
    params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, str(PROJECT_ROOT / "pipelines" / "tune.py"), "--splits", "missing.parquet",
               "--images", "images", "--out", "training.json", "--reports", "reports",
               "--checkpoints", "checkpoints", "--study-file", "optuna.db"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(
        "error: params.yaml: "
    )
    assert reason in result.stderr and "Traceback" not in result.stderr


def test_list_entries_and_split_shares_are_checked_when_the_settings_load(tmp_path):
    params = yaml.safe_load(PARAMS.read_text())
    params["tune"]["space"]["head_learning_rate"] = ["3e-4", "3e-3"]  # YAML reads these as strings
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert load_section("tune", path).space.head_learning_rate == [3e-4, 3e-3]
    params["tune"]["space"]["dropout"] = [0.1, "half"]
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"tune\.space\.dropout\[1\]: expected float, got 'half'"):
        load_section("tune", path)
    for shares, reason in (((-0.1, 0.3), "split.val_fraction: -0.1 is not a share"), ((0.5, 0.5), "sum < 1")):
        params["split"]["val_fraction"], params["split"]["test_fraction"] = shares
        path.write_text(yaml.safe_dump(params))
        with pytest.raises(ConfigError, match=reason):
            load_section("split", path)


def test_a_benchmark_recipe_changes_named_train_settings_and_refuses_unknown_or_mistyped_ones():
    """bench/recipe_probe.py --recipe: params.yaml's checks, with the recipe named in the error."""
    from bench.recipe_probe import changed

    base = load_section("train", PROJECT_ROOT / "params.yaml")
    assert changed(base, "unfreeze_layers=100, image_size=192") == dataclasses.replace(
        base, unfreeze_layers=100, image_size=192
    )
    assert changed(base, "finetune_learning_rate=3e-5").finetune_learning_rate == 3e-5
    for text, reason in (
        ("unfreez_layers=3", r"--recipe 'unfreez_layers=3': train.unfreez_layers: unknown key"),
        ("image_size=big", r"train.image_size: expected int, got 'big'"),
        ("image_size", r"--recipe 'image_size': expected key=value"),
        ("head=years", r"train.head: 'years' is not a head"),
    ):
        with pytest.raises(ConfigError, match=reason):
            changed(base, text)
