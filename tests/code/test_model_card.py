"""The model card states intended use, every headline figure and the known failure conditions."""

import pandas as pd

from agerange.model_card import model_card


def test_the_card_states_use_figures_and_where_the_model_fails():
    evaluation = {
        "val": {"accuracy": 0.58, "within_one": 0.94, "mae_years": 5.3, "ethnicity_accuracy_gap": 0.02},
        "test": {
            "accuracy": 0.56,
            "within_one": 0.941,
            "mae_years": 5.6,
            "answer_mae_years": 5.4,
            "ethnicity_worst_accuracy": 0.537,
        },
    }
    predict_path = {
        "test": {"accuracy": 0.561, "within_one": 0.939},
        "new_photos": {"labelled_photos": 270, "range_accuracy": 0.37, "range_within_one": 0.807},
    }
    conditions = pd.DataFrame([
        {"condition": "blur", "low": 3.0, "high": 40.0, "images": 700, "accuracy": 0.41, "drop": 0.15},
        {"condition": "brightness", "low": 0.6, "high": 0.9, "images": 700, "accuracy": 0.55, "drop": 0.01},
        {"condition": "face_size", "bin": "no face found", "low": float("nan"), "high": float("nan"),
         "images": 40, "accuracy": 0.45, "drop": 0.11},
    ])  # fmt: skip
    card = model_card(
        {"backbone": "mobilenet_v2", "image_size": 160}, evaluation, predict_path, conditions, 7
    )
    assert card.startswith("# agerange model card (version 7)") and "## Intended use" in card
    # the share of wrong answers is the test split's own, not a fixed phrase
    assert "44% of exact answers on the test split are wrong" in card.split("## Model")[0]
    bare = model_card({"backbone": "mobilenet_v2"}, {}, {}, None)
    assert "many exact answers are wrong" in bare
    assert "| test | - | - | - / - |" in bare and "nan" not in bare  # figures missing, not NaN
    assert "| test | 56.0% | 94.1% | 5.6 / 5.4 |" in card and "53.7%" in card
    assert "| validation | 58.0% | 94.0% | 5.3 / - |" in card  # an evaluation from before the answered age
    assert "| new photos (270 labelled real photos, their age ranges) | 37.0% | 80.7% |" in card
    failures = card.split("## Known failure conditions")[1]
    assert failures.index("blur between 3 and 40: 41.0% exact") < failures.index("brightness")
    assert "face_size where the detector found no face: 45.0% exact" in failures


def test_the_card_names_the_served_variant_and_every_variants_validation_figures():
    choice = {
        "chosen": "model int8",
        "rule": "fastest within 0.5 points",
        "val": {
            "model float": {"accuracy": 0.59, "within_one": 0.9487},
            "model int8": {"accuracy": 0.5889, "within_one": 0.9439},
        },
    }
    info = {"backbone": "mobilenet_v2", "image_size": 160, "variant": choice}
    card = model_card(info, {}, {}, None)
    served = card.split("## Served variant")[1]
    assert "Served: **model int8**. Rule: fastest within 0.5 points." in served
    assert "| model float | 59.0% | 94.9% |" in served and "| model int8 | 58.9% | 94.4% |" in served
    assert "## Served variant" not in model_card({"backbone": "mobilenet_v2"}, {}, {}, None)
    # with the labelled new photos measured, their range figures; an int8 variant's float layers
    new_photos = {"new_photos_range_accuracy": 0.4185, "new_photos_range_within_one": 0.8259}
    choice["val"]["model int8"] |= new_photos
    card = model_card({**info, "layers_in_float": ["block_2_depthwise_relu"]}, {}, {}, None)
    assert "| variant | validation exact group | within one | new photos: range exact | within one |" in card
    assert "| model int8 | 58.9% | 94.4% | 41.9% | 82.6% |" in card
    assert "| model float | 59.0% | 94.9% | - | - |" in card
    assert "computes these layers in float: block_2_depthwise_relu." in card


def test_the_card_says_how_the_served_model_uses_the_mirror_image():
    info = {"backbone": "mobilenet_v2", "image_size": 160}
    cards = {
        name: model_card({**info, "predict": predict}, {}, {}, None)
        for name, predict in {
            "off": {"flip": False, "flip_margin": 0.1},
            "every face": {"flip": True, "flip_margin": None},
            "unsure": {"flip": True, "flip_margin": 0.1},
        }.items()
    }
    assert "TFLite classifier on each face once, without the mirror image." in cards["off"]
    assert "averaged with the mirror image of every face." in cards["every face"]
    assert "where its answer leads the runner-up by less than 0.1" in cards["unsure"]


def test_the_card_gives_the_new_photos_an_interval_and_the_gap_its_chance_level():
    evaluation = {
        "test": {"accuracy": 0.56, "within_one": 0.94, "mae_years": 5.2, "ethnicity_accuracy_gap": 0.099,
                 "ethnicity_gap_by_chance": 0.053, "ethnicity_gap_p_value": 0.046},
    }  # fmt: skip
    new_photos = {"labelled_photos": 270, "photos_with_face": 270, "range_accuracy": 122 / 270,
                  "range_within_one": 225 / 270}  # fmt: skip
    card = model_card({"backbone": "mobilenet_v2"}, evaluation, {"new_photos": new_photos}, None)
    # Wilson 95% intervals of 122 and 225 right of 270
    assert "their age ranges; in brackets the 95% interval) | 45.2% (39-51%) | 83.3% (78-87%) |" in card
    assert "5.3% on test (the measured gap's p-value 0.05)" in card
    assert "on validation" not in card  # a side without the figures is left out
