"""Typed settings, stated once: one frozen dataclass per params.yaml section.

Every stage builds its settings here, first thing, so an unknown or missing key stops it with a
one-line error naming the key and the file before any data is decoded. A new option is one field
below, one line in params.yaml, and its use in the one function that needs it.
"""

import dataclasses
import json
import logging
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agerange.files import write_json
from agerange.labels import bins_to_ranges
from agerange.quiet import quiet_expected_output

PARAMS_FILE = Path("params.yaml")


HEADS = ("groups", "ages")  # the classifier's output: age-group probabilities, or a distribution over years


class ConfigError(ValueError):
    """A settings file with an unknown, missing or mistyped key."""


@dataclass(frozen=True)
class IngestConfig:
    trusted_sha256: dict[str, str]  # archive name -> sha256 the ingest stage accepts
    min_age: int
    max_age: int
    workers: int  # decoding processes; 0 = one per CPU core


@dataclass(frozen=True)
class ValidateConfig:
    image_size: int
    min_per_group: int
    min_brightness: float
    max_brightness: float
    min_blur: float
    mostly: float


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float
    test_fraction: float
    seed: int

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"split.{name}: {getattr(self, name)} is not a share between 0 and 1")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("split: val_fraction + test_fraction must leave images to train on (sum < 1)")


@dataclass(frozen=True)
class RebalanceConfig:
    strategy: str  # undersample | oversample | class_weight | none
    max_per_group: int | None
    seed: int


@dataclass(frozen=True)
class LabelCheckConfig:
    """Suspected label errors in the training split (`label_noise`); never val or test."""

    backbone: str  # whose pretrained pooled features the out-of-fold classifier reads
    image_size: int
    folds: int
    min_group_distance: int  # report labels at least this many groups from the suggestion
    drop: bool  # leave the reported images out of training (the rebalance stage)
    seed: int


@dataclass(frozen=True)
class TrainConfig:
    """How one model is trained (params.yaml `train`, with the study's best applied by `resolve`)."""

    backbone: str
    weights_dir: str
    weights_sha256: str | None
    image_size: int
    unfreeze_layers: int
    dropout: float
    head: str  # groups (ten age-group probabilities) | ages (a distribution over years of age)
    age_loss_weight: float  # ages head: weight of the expected age's L1 error (per 10 years) in the loss
    head_learning_rate: float
    finetune_learning_rate: float
    head_epochs: int
    finetune_epochs: int
    patience: int
    batch_size: int
    neighbour_smoothing: float
    age_sigma: float
    augment: bool | str  # true | false | auto (by device)
    augment_variants: int  # real-photo versions of each training image (augment.degrade)
    augment_strength: float  # how far those versions move from the chip, 0 to 1
    realign: bool
    weight_soup: bool
    finetune_runs: int
    ensemble_members: int
    mixed_precision: str  # auto | on | off
    deterministic: str  # auto | on | off: TensorFlow's deterministic op algorithms (auto: on a GPU)
    threads: int  # CPU threads of each TensorFlow thread pool; 0 = TensorFlow's choice (all cores)
    seed: int

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"train.head: {self.head!r} is not a head (known: {', '.join(HEADS)})")
        if self.head == "ages" and self.age_sigma <= 0:
            raise ConfigError("train.age_sigma: must be > 0 with head 'ages' (the targets' spread)")
        for name in ("mixed_precision", "deterministic"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise ConfigError(f"train.{name}: {getattr(self, name)!r} is not auto, on or off")


@dataclass(frozen=True)
class TuneSpace:
    """The sweep's search space: lists of choices, [low, high] ranges."""

    backbone: list[str]
    unfreeze_layers: dict[str, list[int]]  # per backbone
    head_learning_rate: list[float]  # log scale
    finetune_learning_rate: list[float]  # log scale
    dropout: list[float]
    rebalance_strategy: list[str]
    # choices for these train settings; fewer than two: not tuned, params.yaml's value applies
    head: list[str] = field(default_factory=list)
    augment_variants: list[int] = field(default_factory=list)
    augment_strength: list[float] = field(default_factory=list)  # choices, not a range: each is cached


# train settings the space may offer as a list of choices
TUNED_CHOICES = ("head", "augment_variants", "augment_strength")


@dataclass(frozen=True)
class TuneConfig:
    study_name: str
    storage: str
    n_trials: int
    timeout_minutes: int | float
    nightly_trials: int
    sampler: str
    pruner: str
    seed: int
    heartbeat_seconds: int
    space: TuneSpace


@dataclass(frozen=True)
class PackageConfig:
    """How the served model and `agerange predict` treat new photos."""

    detector: str = "blazeface_short"
    min_detector_score: float = 0.6
    min_face_pixels: int = 32
    flip: bool = True
    # with flip: mirror only the faces whose answer leads the runner-up by less than this
    # (inference.decision_margin); None mirrors every face (a package saved without it)
    flip_margin: float | None = None
    neighbour_weight: float = 0.5
    # the package stage serves the fastest variant (int8, distilled student, each also without
    # the mirror) whose validation and labelled new photos' accuracy and within-one each lose at
    # most this much against the trained model in float with the mirror
    max_accuracy_loss: float = 0.005
    calibration_photos: int = 300  # training photos whose face chips calibrate the int8 export
    # the int8 export computes this many layers in float: those int8 serves worst on the
    # calibration chips (serving.least_quantizable_layers)
    int8_float_layers: int = 0
    # extra age ranges to answer in, [[lowest, highest], ..., [lowest, null]] covering 0 and up
    # (e.g. FairFace's); None: the age groups only
    ranges: list[list[int | None]] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_accuracy_loss < 1:
            raise ConfigError(f"package.max_accuracy_loss: {self.max_accuracy_loss} is not a share in [0, 1)")
        if self.flip_margin is not None and not self.flip_margin >= 0:
            raise ConfigError(f"package.flip_margin: {self.flip_margin} is negative (a margin is 0 or more)")
        if self.int8_float_layers < 0:
            raise ConfigError(f"package.int8_float_layers: {self.int8_float_layers} is negative")
        if self.calibration_photos < 1:
            raise ConfigError(f"package.calibration_photos: {self.calibration_photos} must be at least 1")
        if self.ranges is not None:
            try:
                if any(not isinstance(pair, list) or len(pair) != 2 for pair in self.ranges):
                    raise ValueError("each range is [lowest, highest] (highest null for the last)")
                bins_to_ranges([tuple(pair) for pair in self.ranges])
            except (TypeError, ValueError) as error:
                raise ConfigError(f"package.ranges: {error}") from None

    def range_list(self) -> list[tuple[int, int | None]] | None:
        """`ranges` as (lowest, highest) pairs."""
        return None if self.ranges is None else [tuple(pair) for pair in self.ranges]


@dataclass(frozen=True)
class DistilConfig:
    """The distil stage: one student network trained on the trained model's probabilities."""

    # False: the stage trains nothing and writes a folder saying so (model.SKIPPED), and the
    # package stage weighs the trained model's variants only
    enabled: bool
    image_size: int  # the student's input side in pixels
    teacher_weight: float  # share of the teacher's probabilities in each target (the rest: the label's)
    seed: int

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ConfigError(f"distil.image_size: {self.image_size} is below 32 pixels")
        if not 0 <= self.teacher_weight <= 1:
            raise ConfigError(f"distil.teacher_weight: {self.teacher_weight} is not a share in [0, 1]")


@dataclass(frozen=True)
class DriftConfig:
    new_photos: str
    model: str
    reference_size: int
    control_size: int
    alpha: float
    embedding_auc: float
    seed: int


@dataclass(frozen=True)
class RegisterConfig:
    name: str
    split: str
    metric: str
    greater_is_better: bool


SECTIONS: dict[str, type] = {
    "ingest": IngestConfig,
    "validate": ValidateConfig,
    "split": SplitConfig,
    "rebalance": RebalanceConfig,
    "label_check": LabelCheckConfig,
    "train": TrainConfig,
    "distil": DistilConfig,
    "tune": TuneConfig,
    "package": PackageConfig,
    "drift": DriftConfig,
    "register": RegisterConfig,
}

# Tuned keys that belong to another section than `train` (the study's name -> (section, key)).
TUNED_ELSEWHERE = {"rebalance_strategy": ("rebalance", "strategy")}


def build(kind: type, values: Any, where: str) -> Any:
    """A `kind` dataclass from a mapping, refusing unknown, missing and mistyped keys.

    Args:
        kind: a dataclass of this module.
        values: the mapping read from YAML or JSON.
        where: what to name in an error, e.g. "params.yaml: train".
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(fields)})")
    built = {}
    for name, spec in fields.items():
        if name not in values:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{name}: missing key")
            continue
        built[name] = _typed(values[name], typing.get_type_hints(kind)[name], f"{where}.{name}")
    return kind(**built)


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against a type hint (numbers written as 3e-4 in YAML arrive as strings)."""
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and not isinstance(value, bool):
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option) or (Any,)
            return value if item is Any else [_typed(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        if typing.get_origin(option) is dict and isinstance(value, dict):
            _, item = typing.get_args(option) or (Any, Any)
            return value if item is Any else {k: _typed(v, item, f"{where}.{k}") for k, v in value.items()}
    expected = " or ".join(getattr(option, "__name__", str(option)) for option in options)
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")


def load_section(name: str, path: Path = PARAMS_FILE) -> Any:
    """One section of params.yaml as its typed settings (each stage reads only what it needs)."""
    path = Path(path)
    try:
        with open(path) as stream:
            params = yaml.safe_load(stream) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read settings ({error})") from None
    if name not in SECTIONS:
        raise ConfigError(f"{path}: no section type '{name}' (sections: {', '.join(SECTIONS)})")
    if name not in params:
        raise ConfigError(f"{path}: section '{name}' missing")
    return build(SECTIONS[name], params[name], f"{path}: {name}")


def load_params(section: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """One section as a plain dict, checked like `load_section` (for logging and old callers)."""
    return dataclasses.asdict(load_section(section, path))


@dataclass(frozen=True)
class ResolvedTraining:
    """What the train stage trains with: params.yaml's values with the study's best applied."""

    train: TrainConfig
    rebalance: RebalanceConfig
    tuned: dict[str, Any] = field(default_factory=dict)  # the study's best params (empty: none)


def resolve(train: TrainConfig, rebalance: RebalanceConfig, tuned: dict[str, Any]) -> ResolvedTraining:
    """Apply tuned values (the study's best, or one trial's choice) over params.yaml's.

    The tune stage builds both the train stage's configuration and each trial's with this one
    function, so the two cannot drift apart. A tuned key that no section has is refused.
    """
    train_values, rebalance_values = dataclasses.asdict(train), dataclasses.asdict(rebalance)
    for key, value in tuned.items():
        if key in TUNED_ELSEWHERE:
            rebalance_values[TUNED_ELSEWHERE[key][1]] = value
        elif key in train_values:
            train_values[key] = value
        else:
            raise ConfigError(f"tuned parameter '{key}': not a train or rebalance setting")
    return ResolvedTraining(
        build(TrainConfig, train_values, "tuned train"),
        build(RebalanceConfig, rebalance_values, "tuned rebalance"),
        dict(tuned),
    )


def write_resolved(resolved: ResolvedTraining, path: Path) -> None:
    """Save the resolved training configuration (the tune stage's output)."""
    write_json(dataclasses.asdict(resolved), path)


def read_resolved(path: Path) -> ResolvedTraining:
    """The tune stage's resolved training configuration, checked like params.yaml."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the resolved training configuration ({error})") from None
    where = f"{path}: "
    if not isinstance(values, dict) or set(values) != {"train", "rebalance", "tuned"}:
        raise ConfigError(f"{path}: expected the keys train, rebalance and tuned (run `dvc repro tune`)")
    return ResolvedTraining(
        build(TrainConfig, values["train"], where + "train"),
        build(RebalanceConfig, values["rebalance"], where + "rebalance"),
        values["tuned"],
    )


def setup_logging(level: str | None = None) -> None:
    """Plain one-line log records on stderr; called once, by entry points only.

    Also quiets what a run prints but nobody needs to act on (`quiet.quiet_expected_output`), so it
    must run before anything imports TensorFlow. At DEBUG level (AGERANGE_LOG_LEVEL=DEBUG)
    everything is shown.
    """
    level = level or os.environ.get("AGERANGE_LOG_LEVEL", "INFO")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ errors only, once TensorFlow has loaded
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if str(level).upper() != "DEBUG":
        quiet_expected_output()


def fail(message: str) -> typing.NoReturn:
    """Stop an entry point with a one-line error and a non-zero exit status."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
