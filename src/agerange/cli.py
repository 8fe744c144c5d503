"""The `agerange` command: tools for people, over the same functions the pipeline uses."""

import argparse
import os
import sys
from pathlib import Path


def _load_model(folder: Path):
    import json

    import keras

    if not (folder / "model.keras").is_file():
        raise FileNotFoundError(f"{folder}: no model.keras here (run `dvc repro train` first)")
    info = json.loads((folder / "model_info.json").read_text())
    return keras.models.load_model(folder / "model.keras", compile=False), info


def feature_maps_command(args: argparse.Namespace) -> None:
    from agerange.explain import conv_layer_names, feature_maps, plot_feature_maps
    from agerange.preprocess import chip_pixels, read_image

    model, info = _load_model(args.model)
    if args.layer is None:
        print("layers with feature maps:", ", ".join(conv_layer_names(model)))
        return
    chip = chip_pixels(read_image(args.image), info["image_size"])
    maps = feature_maps(model, chip, args.layer)
    path = plot_feature_maps(chip, maps, args.layer, args.out)
    print(f"feature maps of {args.layer} for {args.image}: {path}")


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="agerange", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    maps = commands.add_parser(
        "feature-maps", help="picture of a convolution layer's activations for one photo"
    )
    maps.add_argument("image", type=Path, help="a face chip (aligned face photo)")
    maps.add_argument(
        "--model", type=Path, default=Path("data/model"), help="folder written by the train stage"
    )
    maps.add_argument("--layer", help="layer name; omit to list the layers that have feature maps")
    maps.add_argument("--out", type=Path, default=Path("feature_maps.png"))
    maps.set_defaults(run=feature_maps_command)

    args = parser.parse_args(argv)
    from agerange.config import setup_logging
    from agerange.preprocess import ImageError

    setup_logging("WARNING")
    try:
        args.run(args)
    except (ImageError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from error


if __name__ == "__main__":
    main()
