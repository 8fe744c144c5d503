"""Predict speed: the project's path (BlazeFace + TFLite) against the naive way, in one run.

Three tables, all measured side by side in this process:
  1. detectors  - BlazeFace short range (the default), BlazeFace full range and MTCNN (the
                  `mtcnn` package) on the same photos: ms per photo and faces found
  2. latency    - one-face photos, from JPEG bytes to age ranges (decode, detect, align,
                  classify): p50 and p95 per stage and in total. `project` classifies with the
                  packaged TFLite model; `naive` does the same but calls Keras `model.predict`
                  on each face; the target is p50 <= 60 ms for the project
  3. throughput - face chips at the model's input size, classified in batches (project, with
                  and without the mirror-image average) against `model.predict` once per chip;
                  the target is >= 300 chips/s

    python bench/predict_latency.py [--photos data/new_photos] [--serving data/serving]
        [--keras data/model/model.keras] [--chips data/images] [--n 60]
"""

import argparse
import time
from pathlib import Path

import numpy as np

from agerange.config import setup_logging


def percentiles(samples: list[float]) -> str:
    p50, p95 = np.percentile(np.asarray(samples) * 1000, [50, 95])
    return f"{p50:7.1f} {p95:7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=Path("data/new_photos"))
    parser.add_argument("--serving", type=Path, default=Path("data/serving"))
    parser.add_argument("--keras", type=Path, default=Path("data/model/model.keras"))
    parser.add_argument("--chips", type=Path, default=Path("data/images"))
    parser.add_argument("--n", type=int, default=60, help="photos per latency row")
    parser.add_argument("--batch-chips", type=int, default=512)
    parser.add_argument("--naive-chips", type=int, default=64)
    args = parser.parse_args()
    setup_logging()  # before TensorFlow is imported: it quiets the notices a CPU run prints

    import keras

    from agerange.faces import CHIP_SIZE, FaceDetector, align_face, select_faces
    from agerange.predict import AgePredictor, find_photos
    from agerange.preprocess import chip_pixels, read_image

    predictor = AgePredictor.from_directory(args.serving)
    size = predictor.image_size
    photos, _ = find_photos([args.photos])
    payloads = [(p.name, p.read_bytes()) for p in photos]

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
    find = predictor.detector.find_faces  # the detection predict uses
    one_face = [(n, d) for n, d in payloads if len(find(read_image(d, n))) == 1][: args.n]
    model = keras.models.load_model(args.keras, compile=False)
    print(f"\n2. Latency per one-face photo ({len(one_face)} photos), JPEG bytes to age range")
    print(f"{'way':<10} {'stage':<10} {'p50 ms':>7} {'p95 ms':>7}")
    rows = {}
    for way in ("naive", "project"):
        stages = {"decode": [], "detect": [], "align": [], "classify": [], "total": []}
        for index, (name, data) in enumerate(one_face + one_face[:1]):
            t0 = time.perf_counter()
            image = read_image(data, name)
            t1 = time.perf_counter()
            faces, _ = select_faces(predictor.detector.find_faces(image), predictor.min_face_pixels)
            t2 = time.perf_counter()
            chips = np.stack([chip_pixels(align_face(image, f, CHIP_SIZE), size) for f in faces])
            t3 = time.perf_counter()
            if way == "project":
                predictor.classifier(chips, flip=predictor.flip)
            else:
                model.predict(chips.astype(np.float32), verbose=0)
            t4 = time.perf_counter()
            if index == 0:
                continue  # the first call of each way pays one-time set-up
            for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                stages[stage].append(seconds)
        rows[way] = stages
        for stage, samples in stages.items():
            print(f"{way:<10} {stage:<10} {percentiles(samples)}")
    ratio = np.median(rows["naive"]["total"]) / np.median(rows["project"]["total"])
    print(f"p50 total: project {np.median(rows['project']['total']) * 1000:.1f} ms (target <= 60), "
          f"{ratio:.1f}x faster than naive")  # fmt: skip

    # 3. batch throughput on face chips at the model's input size
    chip_files = sorted(args.chips.rglob("*.jpg"))[: args.batch_chips]
    chips = np.stack([chip_pixels(read_image(p), size) for p in chip_files])
    print(f"\n3. Throughput on {len(chips)} face chips at {size} px")
    print(f"{'way':<34} {'chips/s':>8}")
    predictor.classifier(chips[:64], flip=False)
    results = {}
    for label, flip in (("project TFLite, batches of 64", False), ("project TFLite + mirror average", True)):
        start = time.perf_counter()
        predictor.classifier(chips, flip=flip, batch_size=64)
        results[label] = len(chips) / (time.perf_counter() - start)
    naive = chips[: args.naive_chips].astype(np.float32)
    model.predict(naive[:1], verbose=0)
    start = time.perf_counter()
    for chip in naive:
        model.predict(chip[None], verbose=0)
    results["naive model.predict per chip"] = len(naive) / (time.perf_counter() - start)
    for label, rate in results.items():
        print(f"{label:<34} {rate:>8.0f}")
    best = results["project TFLite, batches of 64"]
    speedup = best / results["naive model.predict per chip"]
    print(f"project {best:.0f} chips/s (target >= 300), {speedup:.0f}x naive")


if __name__ == "__main__":
    main()
