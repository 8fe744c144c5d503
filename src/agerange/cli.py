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


EXIT_PARTIAL = 3  # some photos could not be read; the others were processed


def predict_command(args: argparse.Namespace) -> int:
    import csv
    import io
    import json

    from tqdm import tqdm

    from agerange.files import atomic_path
    from agerange.predict import (
        annotate,
        annotated_names,
        find_photos,
        format_table,
        load_predictor,
        result_rows,
    )

    photos, missing = find_photos(args.paths)
    for line in missing:
        print(f"error: {line}", file=sys.stderr)
    if not photos:
        print("error: no photos to process", file=sys.stderr)
        return 1
    predictor = load_predictor(args.model, store=args.store)
    results = []
    # the decoded photos are kept only for drawing on them
    stream = predictor.stream(
        photos, batch_photos=args.batch, workers=args.workers, keep_images=bool(args.annotate)
    )
    copies = annotated_names(photos)
    progress = tqdm(
        stream, total=len(photos), desc="photos", unit="photo", disable=len(photos) < 2, file=sys.stderr
    )
    for prepared, result in progress:
        results.append(result)
        if result.error is not None:
            tqdm.write(f"error: {result.error}", file=sys.stderr)  # on its own line, above the progress bar
            continue
        if args.annotate:
            args.annotate.mkdir(parents=True, exist_ok=True)
            with atomic_path(args.annotate / copies[prepared.name]) as target:
                annotate(prepared.image, result).save(target, format="JPEG", quality=90)
    output = io.StringIO()
    if args.format == "json":
        json.dump([result.as_dict() for result in results], output, indent=2)
        output.write("\n")
    elif args.format == "csv":
        rows = result_rows(results)
        writer = csv.DictWriter(output, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    else:
        output.write(format_table(results) + "\n")
    if args.out:
        with atomic_path(args.out) as target:
            target.write_text(output.getvalue())
    else:
        sys.stdout.write(output.getvalue())
    failed = sum(result.error is not None for result in results) + len(missing)
    faces = sum(len(result.faces) for result in results)
    print(f"{len(results)} photos, {faces} faces, {failed} failed", file=sys.stderr)
    if failed and failed == len(results) + len(missing):
        return 1
    return EXIT_PARTIAL if failed else 0


def web_command(args: argparse.Namespace) -> int:
    from agerange.predict import load_predictor
    from agerange.web import serve_web

    predictor = load_predictor(args.model, store=args.store)
    serve_web(predictor, host=args.host, port=args.port)
    return 0


def _add_feature_maps(commands) -> None:
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


def _add_model_arguments(command: argparse.ArgumentParser) -> None:
    """--model and --store, shared by the commands that run the packaged model."""
    command.add_argument(
        "--model",
        default="models:/agerange@champion",
        help="registry or run URI, or a packaged model folder such as data/serving",
    )
    command.add_argument(
        "--store",
        help="MLflow store of --model: a folder or a sqlite:///, postgresql://, http(s):// URI "
        "(default: $MLFLOW_TRACKING_URI when set, else mlruns/)",
    )


def _add_predict(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="age ranges of every face in photos (files or folders)",
        description="Age ranges of every face in photos. Exit status: 0 all photos read, "
        f"{EXIT_PARTIAL} some could not be read (the others are reported), 1 none could be read.",
    )
    predict.add_argument("paths", nargs="+", type=Path, help="photos (JPEG, PNG, WebP) or folders of them")
    _add_model_arguments(predict)
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table")
    predict.add_argument("--out", type=Path, help="write the results here instead of standard output")
    predict.add_argument(
        "--annotate", type=Path, help="folder for copies of the photos with boxes and labels"
    )
    predict.add_argument(
        "--workers", type=_at_least_one, default=os.cpu_count() or 1,
        help="threads that decode photos and find faces while the classifier works (default: one per core)",
    )  # fmt: skip
    predict.add_argument(
        "--batch", type=_at_least_one, default=32, help="photos whose faces are classified together"
    )
    predict.set_defaults(run=predict_command)


def _at_least_one(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return int(text)


def _add_web(commands) -> None:
    web = commands.add_parser("web", help="a local web page: pick a photo, see each face's age group")
    _add_model_arguments(web)
    web.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)"
    )
    web.add_argument("--port", type=int, default=8000)
    web.set_defaults(run=web_command)


def build_parser() -> argparse.ArgumentParser:
    """The `agerange` command line: feature-maps, predict, web."""
    parser = argparse.ArgumentParser(prog="agerange", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_feature_maps(commands)
    _add_predict(commands)
    _add_web(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one `agerange` command; errors are one line on stderr and exit status 1."""
    args = build_parser().parse_args(argv)
    from agerange.config import setup_logging
    from agerange.preprocess import ImageError

    setup_logging("WARNING")  # before any command imports TensorFlow: it quiets its notices
    try:
        status = args.run(args)
    except (ImageError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
