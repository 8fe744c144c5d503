"""Predict speed: every packaged variant (float, int8, the distilled student) against the naive
way (Keras `model.predict` per face), measured side by side in one run, with each variant's
validation accuracy through the whole predict path beside it (from the package stage's report).

The tables:
  1. detectors  - BlazeFace short range (the default), BlazeFace full range and MTCNN (the
                  `mtcnn` package) on the same photos: ms per photo and faces found
  2. latency    - one-face photos, from JPEG bytes to age ranges (decode, detect, align,
                  classify): p50 and p95 per stage and in total, per variant; target p50 <= 5 ms
  3. throughput - face chips at each variant's input size, classified in batches with the
                  default predict settings (the mirror-image average when package.flip, for
                  the faces less sure than package.flip_margin), with every face mirrored and
                  without the mirror; target >= 1,400 chips/s
  3b. one network - the trained model's first member alone, its weights at each of
                  --network-sizes, in int8 without the mirror: what input size the chips/s target
                  asks for on this machine (speed only; the weights were trained at one size)
  4. a folder   - every photo of --photos through the served-like predictor (the trained model
                  in float): one at a time (1 thread, batches of 1 photo) vs the pipelined
                  stream that `agerange predict` uses (decode and detect in threads while the
                  faces of the previous batch are classified together)
  5. fidelity   - each variant's outputs against the trained model in float (and an int8
                  export against its own float one) on the same faces: --fidelity-chips
                  validation chips and the faces of --photos, with the default predict settings:
                  answers changed (age group, FairFace range), expected-age distance, outputs
                  that are exactly 0 and the range of the sums (serving.output_fidelity)

The variants are exported here from data/model and data/student (when the distil stage trained
one: distil.enabled) by the package stage's own functions (float, and int8 calibrated on the
same training photos), so the bench needs only the pipeline's outputs. When
package.int8_float_layers keeps some layers in float, the trained model's int8 export with
every layer in int8 ("model int8 all") runs beside it in every table.

    python bench/predict_latency.py [--photos data/new_photos] [--model data/model]
        [--student data/student] [--report data/reports/predict_path.json] [--chips data/images] [--n 60]
"""

import argparse
import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agerange.config import load_section, setup_logging

STAGES = ("decode", "detect", "align", "classify", "total")


def percentiles(samples: list[float]) -> str:
    p50, p95 = np.percentile(np.asarray(samples) * 1000, [50, 95])
    return f"{p50:7.2f} {p95:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=Path("data/new_photos"))
    parser.add_argument("--model", type=Path, default=Path("data/model"))
    parser.add_argument("--student", type=Path, default=Path("data/student"))
    parser.add_argument("--report", type=Path, default=Path("data/reports/predict_path.json"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits.parquet"))
    parser.add_argument("--chips", type=Path, default=Path("data/images"))
    parser.add_argument("--n", type=int, default=60, help="photos per latency row")
    parser.add_argument("--batch-chips", type=int, default=1024)
    parser.add_argument("--naive-chips", type=int, default=64)
    parser.add_argument("--fidelity-chips", type=int, default=800, help="validation chips for table 5")
    parser.add_argument(
        "--network-sizes", type=int, nargs="*", default=[160, 128, 112, 96], help="input sides for table 3b"
    )
    args = parser.parse_args()
    setup_logging()  # before TensorFlow is imported: it quiets the notices a CPU run prints

    from agerange.faces import CHIP_SIZE, FaceDetector, align_face, select_faces
    from agerange.predict import AgePredictor, find_photos
    from agerange.preprocess import chip_pixels, read_image
    from agerange.serving import (
        REFERENCE_VARIANT,
        UNMIRRORED,
        calibration_chips,
        calibration_sample,
        export_variant,
        export_variants,
        load_models,
        output_fidelity,
    )

    settings = load_section("package")
    photos, _ = find_photos([args.photos])
    payloads = [(p.name, p.read_bytes()) for p in photos]
    report = json.loads(args.report.read_text()) if args.report.is_file() else {}
    accuracy = report.get("variant", {}).get("val", {})
    served = report.get("variant", {}).get("chosen", "")

    # the variants, exported by the package stage's own function
    scratch = Path(tempfile.mkdtemp(prefix="agerange-bench-"))
    calibration = calibration_sample(pd.read_parquet(args.splits), args.chips, settings.calibration_photos)
    # the package stage's own loader: a student the distil stage skipped (distil.enabled) is left out
    folders = {"model": (args.model, "train")}
    if args.student.is_dir():
        folders["student"] = (args.student, "distil")
    models, _ = load_models(folders)
    keras_models = {kind: model for kind, (model, _) in models.items()}
    folders, _ = export_variants(models, scratch, settings, calibration)
    if settings.int8_float_layers:
        # what leaving the least quantizable layers in float costs and gains, side by side
        folders["model int8 all"] = scratch / "model_int8_all"
        chips = calibration_chips(folders["model float"], calibration)
        all_int8 = dataclasses.replace(settings, int8_float_layers=0)
        export_variant(*models["model"], folders["model int8 all"], all_int8, chips)
    predictors = {name: AgePredictor.from_directory(folder) for name, folder in folders.items()}
    if served.endswith(UNMIRRORED) and served.removesuffix(UNMIRRORED) in folders:
        # the rule chose a variant without the mirror average: bench it as served, beside the default
        predictors[served] = AgePredictor.from_directory(folders[served.removesuffix(UNMIRRORED)], flip=False)
    first = next(iter(predictors.values()))

    # 1. detectors on the same photos
    print(f"\n1. Face detectors on {min(len(payloads), args.n)} photos ({photos[0].parent})")
    print(f"{'detector':<18} {'p50 ms':>7} {'p95 ms':>7} {'faces':>6} {'no face':>8}")
    images = [read_image(data, name) for name, data in payloads[: args.n]]
    from mtcnn import MTCNN

    mtcnn = MTCNN(device="CPU:0")
    candidates = {
        "blazeface_short": FaceDetector("blazeface_short", 0.6),
        "blazeface_full": FaceDetector("blazeface_full", 0.6),
        "mtcnn": lambda image: mtcnn.detect_faces(np.asarray(image)),
    }
    for name, detect in candidates.items():
        detect(images[0])  # warm-up
        times, counts = [], []
        for image in images:
            start = time.perf_counter()
            counts.append(len(detect(image)))
            times.append(time.perf_counter() - start)
        print(f"{name:<18} {percentiles(times)} {sum(counts):>6} {sum(c == 0 for c in counts):>8}")

    # 2. single-photo latency on one-face photos
    def classified_faces(image) -> list:
        """The faces predict classifies: found, and wide enough (min_face_pixels)."""
        return select_faces(first.detector.find_faces(image), first.min_face_pixels)[0]

    one_face = [(n, d) for n, d in payloads if len(classified_faces(read_image(d, n))) == 1][: args.n]
    print(
        f"\n2. Latency per one-face photo ({len(one_face)} photos), JPEG bytes to age range, "
        f"mirror average {settings.flip} (margin {settings.flip_margin})"
    )
    print(f"{'way':<26} {'stage':<20} {'p50 ms':>7} {'p95 ms':>7}   validation accuracy / within one")
    totals = {}
    ways = {
        "naive model.predict": ("model", None),
        **{name: (name.split()[0], p) for name, p in predictors.items()},
    }
    for way, (kind, predictor) in ways.items():
        size = (predictor or predictors[f"{kind} float"]).image_size
        # with a packaged variant, the classify stage again, side by side (not in the total)
        others = ("classify, mirror all", "classify, no mirror") if predictor is not None else ()
        stages: dict[str, list[float]] = {stage: [] for stage in (*STAGES, *others)}
        for index, (name, data) in enumerate(one_face + one_face[:1]):
            t0 = time.perf_counter()
            image = read_image(data, name)
            t1 = time.perf_counter()
            faces, _ = select_faces(first.detector.find_faces(image), first.min_face_pixels)
            t2 = time.perf_counter()
            chips = np.stack([chip_pixels(align_face(image, f, CHIP_SIZE), size) for f in faces])
            t3 = time.perf_counter()
            if predictor is None:
                keras_models[kind].predict(chips.astype(np.float32), verbose=0)
            else:
                predictor.probabilities(chips)
            t4 = time.perf_counter()
            again = []
            for flip in (True, False)[: len(others)]:
                start = time.perf_counter()
                predictor.classifier(chips, flip=flip)
                again.append(time.perf_counter() - start)
            if index == 0:
                continue  # the first call of each way pays one-time set-up
            measured = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, *again)
            for stage, seconds in zip(stages, measured, strict=True):
                stages[stage].append(seconds)
        totals[way] = float(np.median(stages["total"]))
        figures = accuracy.get(way)
        known = f"   {figures['accuracy']:.3f} / {figures['within_one']:.3f}" if figures else ""
        for stage, samples in stages.items():
            print(f"{way:<26} {stage:<20} {percentiles(samples)}{known if stage == 'total' else ''}")
    for way, total in totals.items():
        ratio = totals["naive model.predict"] / total
        mark = "  <- served" if way == served else ""
        print(f"p50 total {way:<26} {total * 1000:6.2f} ms (target <= 5), {ratio:4.1f}x naive{mark}")

    # 3. batch throughput on face chips at each variant's input size
    chip_files = sorted(args.chips.rglob("*.jpg"))[: args.batch_chips]
    print(f"\n3. Throughput on {len(chip_files)} face chips (batches of 64), chips/s")
    default = f"default (margin {settings.flip_margin})"
    print(f"{'way':<26} {'size':>5} {'mirror every face':>18} {default:>22} {'no mirror':>10}")
    decoded = [read_image(p) for p in chip_files]
    rates = {}
    for way, predictor in predictors.items():
        chips = np.stack([chip_pixels(image, predictor.image_size) for image in decoded])
        predictor.classifier(chips[:64], flip=True)  # warm-up at this batch size
        ways_to_classify = (
            functools.partial(predictor.classifier, chips, flip=True),
            functools.partial(predictor.probabilities, chips),  # the defaults: package.flip, flip_margin
            functools.partial(predictor.classifier, chips, flip=False),
        )
        row = []
        for classify in ways_to_classify:
            start = time.perf_counter()
            classify()
            row.append(len(chips) / (time.perf_counter() - start))
        rates[way] = row[1]
        print(f"{way:<26} {predictor.image_size:>5} {row[0]:>18.0f} {row[1]:>22.0f} {row[2]:>10.0f}")
    size = predictors["model float"].image_size
    naive = np.stack([chip_pixels(image, size) for image in decoded[: args.naive_chips]]).astype(np.float32)
    keras_models["model"].predict(naive[:1], verbose=0)
    start = time.perf_counter()
    for chip in naive:
        keras_models["model"].predict(chip[None], verbose=0)
    naive_rate = len(naive) / (time.perf_counter() - start)
    print(f"{'naive model.predict':<26} {size:>5} {'':>18} {'':>22} {naive_rate:>10.0f}")

    # 3b. what the chips/s target asks of the network: one network alone (the trained model's
    # first member), its weights at each input size, int8 as the package stage exports it, no
    # mirror. Speed only: those weights were trained at the model's own size.
    print(
        f"\n3b. One network alone at each input size (int8, no mirror; speed only), chips/s "
        f"on {len(decoded)} chips"
    )
    print(f"{'size':>5} {'chips/s':>8}  (three runs)")
    import keras

    ensemble, info = models["model"]
    mean = next((layer for layer in ensemble.layers if layer.name == "ensemble_mean"), None)
    member = ensemble if mean is None else keras.Model(ensemble.input, mean.input[0])
    for side in args.network_sizes:
        network = keras.models.clone_model(member, input_tensors=keras.Input((side, side, 3), name="pixels"))
        network.set_weights(member.get_weights())
        float_folder, int8_folder = scratch / f"network_{side}_float", scratch / f"network_{side}_int8"
        export_variant(network, {**info, "image_size": side}, float_folder, settings)
        export_variant(
            network, {**info, "image_size": side}, int8_folder, settings,
            calibration_chips(float_folder, calibration),
        )  # fmt: skip
        network_predictor = AgePredictor.from_directory(int8_folder)
        chips = np.stack([chip_pixels(image, side) for image in decoded])
        network_predictor.classifier(chips[:64], flip=False)  # warm-up at this batch size
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            network_predictor.classifier(chips, flip=False)
            runs.append(len(chips) / (time.perf_counter() - start))
        print(f"{side:>5} {max(runs):>8.0f}  ({' / '.join(f'{rate:.0f}' for rate in runs)})")
    # 4. a folder of photos, one at a time vs the pipelined stream of `agerange predict`
    print(f"\n4. A folder: {len(photos)} photos from JPEG files to answers (model float), two rounds")
    print(f"{'way':<34} {'photos/s':>9}")
    streamed = predictors["model float"]
    list(streamed.stream(photos[:16], 8, 2))  # warm-up: the threads' detectors
    folder_rates: dict[str, list[float]] = {}
    for _ in range(2):
        for label, batch, workers in (("one at a time", 1, 1), ("stream, 2 threads, batches of 32", 32, 2)):
            start = time.perf_counter()
            count = sum(1 for _ in streamed.stream(photos, batch, workers))
            folder_rates.setdefault(label, []).append(count / (time.perf_counter() - start))
    for label, measured in folder_rates.items():
        print(f"{label:<34} {' / '.join(f'{rate:.1f}' for rate in measured):>9}")
    ratio = np.median(folder_rates["stream, 2 threads, batches of 32"]) / np.median(
        folder_rates["one at a time"]
    )
    print(f"stream {ratio:.2f}x one at a time\n")

    # 5. fidelity: the same faces through each variant, against the float reference
    splits = pd.read_parquet(args.splits)
    val_paths = splits[splits["split"] == "val"]["path"][: args.fidelity_chips]
    face_sets = {"validation chips": [read_image(args.chips / path) for path in val_paths], "photo faces": []}
    for image in (read_image(data, name) for name, data in payloads):
        face_sets["photo faces"] += [align_face(image, face, CHIP_SIZE) for face in classified_faces(image)]
    outputs = {
        (way, faces_name): predictor.probabilities(
            np.stack([chip_pixels(chip, predictor.image_size) for chip in chips])
        )[0]
        for way, predictor in predictors.items()
        for faces_name, chips in face_sets.items()
    }
    print(
        f"\n5. Fidelity: {len(face_sets['validation chips'])} validation chips and "
        f"{len(face_sets['photo faces'])} faces of {len(payloads)} photos, "
        f"mirror average {settings.flip} (margin {settings.flip_margin}), "
        f"neighbour weight {settings.neighbour_weight}"
    )
    print(
        f"{'variant':<26} {'against':<14} {'faces':<17} {'group changed':>13} {'range changed':>13} "
        f"{'age, years':>10} {'zero outputs':>12} {'sums':>13}"
    )
    pairs = [(way, REFERENCE_VARIANT) for way in predictors if way != REFERENCE_VARIANT]
    pairs += [(way, way.replace("int8", "float")) for way in predictors if way == "student int8"]
    for way, reference in pairs:
        for faces_name in face_sets:
            figures = output_fidelity(
                outputs[reference, faces_name], outputs[way, faces_name], settings.neighbour_weight
            )
            print(
                f"{way:<26} {reference:<14} {faces_name:<17} {figures['group_changed']:>13.1%} "
                f"{figures['range_changed']:>13.1%} {figures['expected_age_years']:>10.2f} "
                f"{figures['zero_outputs']:>12.1%} {figures['lowest_sum']:>6.3f}-{figures['highest_sum']:.3f}"
            )
    print()

    for way, rate in rates.items():
        mark = "  <- served" if way == served else ""
        print(
            f"{way:<26} {rate:6.0f} chips/s with the default settings (target >= 1400), "
            f"{rate / naive_rate:5.1f}x naive{mark}"
        )


if __name__ == "__main__":
    main()
