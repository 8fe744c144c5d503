"""New photos to age ranges: find faces, align them like training chips, classify them.

This is the one inference path: the `agerange predict` command, the served MLflow model, the
web page, the drift stage and the benchmarks all call `AgePredictor`.

The classifier runs on TensorFlow Lite (exported by the package stage from the trained Keras
model, with the same weights and in-model preprocessing): about 5 ms per face on a 2-core CPU
where `model.predict` takes 70-240 ms. It returns the group probabilities and the penultimate
layer's features (the embeddings the drift report compares).
"""

import json
import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agerange import metrics
from agerange.config import PackageConfig, build
from agerange.faces import (
    CHIP_SIZE,
    DETECTORS,
    PROFILE_EYE_SPACING,
    Face,
    FaceDetector,
    align_face,
    select_faces,
)
from agerange.inference import (
    age_in_group,
    age_interval,
    decide_groups,
    decode_probabilities,
    group_name,
    group_probabilities,
    mirror_average,
    range_name,
    range_probabilities,
)
from agerange.labels import AGE_BINS
from agerange.preprocess import ImageError, chip_pixels, read_image

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# the largest photo file the web page and the served model take: above any phone photo, and a
# bound on what one request can make a server hold
MAX_PHOTO_BYTES = 30 * 1024 * 1024
CLASSIFIER_FILE = "classifier.tflite"
INFO_FILE = "model_info.json"
HEAD_FILE = "head.npz"  # an int8 classifier's output layers, in float (serving.export_classifier)


@dataclass
class FacePrediction:
    """One face: where it is, how sure the detector was, and its age group."""

    face: int
    box: list[float]  # x0, y0, x1, y1 in pixels of the (EXIF-oriented) photo
    detector_score: float
    eye_spacing: float  # eye distance / face box side: about 0.42 facing the camera, less as the head turns
    age_group: str
    group_index: int
    probability: float
    expected_age: float  # the mean of the model's age distribution (what MAE measures)
    age_estimate: int  # the distribution's median, moved into the answered group if outside it
    age_interval: list[int]  # the central 80% of the age distribution, [youngest, oldest]
    probabilities: dict[str, float]
    age_range: str | None = None  # the answer in `package.ranges`, when set (e.g. '20-29')
    range_probability: float | None = None


@dataclass
class PhotoPrediction:
    """Everything found in one photo; `error` is set when the photo could not be read."""

    photo: str
    width: int = 0
    height: int = 0
    faces: list[FacePrediction] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # faces found but not classified, with why
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier:
    """The exported TFLite classifier: uint8 chips in, (probabilities, embeddings) out.

    A float export answers both itself. An int8 export answers the members' embeddings side by
    side, and `HEAD_FILE` beside it holds their output layers, applied here in float.
    """

    def __init__(self, model_file: Path, threads: int = 2) -> None:
        from agerange.faces import tflite_interpreter

        if not Path(model_file).is_file():
            raise FileNotFoundError(f"{model_file}: classifier file missing (run `dvc repro package`)")
        self.interpreter = tflite_interpreter(Path(model_file).read_bytes(), threads)
        self.input = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        head_file = Path(model_file).with_name(HEAD_FILE)
        self.head = _read_heads(head_file, int(outputs[0]["shape"][-1])) if head_file.is_file() else None
        if self.head is not None:
            self.probabilities_index = self.features_index = outputs[0]["index"]
        else:
            # the probabilities are the 10-wide (groups) or AGE_BINS-wide (ages) output; the
            # other one is the embedding (384 to 1,280 wide)
            self.probabilities_index = next(o["index"] for o in outputs if o["shape"][-1] in (10, AGE_BINS))
            self.features_index = next(o["index"] for o in outputs if o["index"] != self.probabilities_index)
        self.image_size = int(self.input["shape"][1])
        # an int8 model (serving.export_classifier with calibration chips) reads uint8 pixels
        self.precision = "float" if self.input["dtype"] == np.float32 else "int8"
        self.batch = 0

    def _as_input(self, batch: np.ndarray) -> np.ndarray:
        """Pixels 0-255 in the model's input type: float32, or quantized with the input's scale
        (an int8 export is calibrated so that uint8 pixels are its input as they are)."""
        kind = self.input["dtype"]
        if kind == np.float32:
            return batch.astype(np.float32)
        scale, zero = self.input["quantization"]
        if kind == np.uint8 and (scale, zero) == (1.0, 0):
            return batch.astype(np.uint8)
        limits = np.iinfo(kind)
        return np.clip(np.round(batch / scale + zero), limits.min, limits.max).astype(kind)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(batch) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self.batch = len(batch)
        self.interpreter.set_tensor(self.input["index"], self._as_input(batch))
        self.interpreter.invoke()
        if self.head is not None:
            return apply_heads(self.interpreter.get_tensor(self.features_index), **self.head)
        return (
            self.interpreter.get_tensor(self.probabilities_index).copy(),
            self.interpreter.get_tensor(self.features_index).copy(),
        )

    def __call__(
        self,
        chips: np.ndarray,
        flip: bool = True,
        batch_size: int = 64,
        flip_margin: float | None = None,
        neighbour_weight: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, 10) and embeddings (N, D) for uint8 chips (N, S, S, 3).

        With `flip`, the probabilities are averaged with the mirror image's (the test-time
        augmentation evaluation uses): for every chip, in the same batch, or with `flip_margin`
        only for the chips whose answer is less sure than that (`inference.mirror_average`).
        """
        probabilities, features = [], []
        for start in range(0, len(chips), batch_size):
            batch = chips[start : start + batch_size]
            if flip and flip_margin is None:
                probs, feats = self._run(np.concatenate([batch, batch[:, :, ::-1]]))
                probs, feats = (probs[: len(batch)] + probs[len(batch) :]) / 2, feats[: len(batch)]
            else:
                probs, feats = self._run(batch)
                if flip:
                    mirrored = lambda rows, batch=batch: self._run(batch[rows, :, ::-1])[0]  # noqa: E731
                    probs = mirror_average(probs, mirrored, flip_margin, neighbour_weight)
            probabilities.append(probs)
            features.append(feats)
        if not probabilities:
            return np.zeros((0, 10), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(probabilities), np.concatenate(features)


def _read_heads(path: Path, embedding_width: int) -> dict[str, np.ndarray]:
    """The output layers beside an int8 classifier, checked against its embeddings' width."""
    try:
        with np.load(path) as saved:
            head = {"kernels": saved["kernels"], "biases": saved["biases"]}
    except Exception as error:  # a truncated or foreign file: zipfile, pickle or key errors
        raise ValueError(f"{path}: unreadable output layers ({type(error).__name__}: {error})") from None
    members, width, classes = head["kernels"].shape
    if members * width != embedding_width or head["biases"].shape != (members, classes):
        raise ValueError(
            f"{path}: output layers for {members} x {width} embeddings, but the classifier gives "
            f"{embedding_width}"
        )
    return head


def apply_heads(
    embeddings: np.ndarray, kernels: np.ndarray, biases: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the members' softmax outputs, and the first member's embedding, from the
    members' embeddings side by side (N, members x D) and their output layers' weights
    (members, D, K) and biases (members, K)."""
    parts = np.split(embeddings.astype(np.float32), len(kernels), axis=1)
    members = zip(parts, kernels, biases, strict=True)
    # einsum, not `@`: NumPy's BLAS would start threads that keep spinning after the product and
    # take the cores from the next TFLite batch (0.7x the int8 classifier's throughput here)
    logits = np.stack([np.einsum("nd,dk->nk", part, kernel) + bias for part, kernel, bias in members])
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = exponentials / exponentials.sum(axis=-1, keepdims=True)
    return probabilities.mean(axis=0), parts[0].copy()


@dataclass
class PreparedPhoto:
    """A photo decoded, its faces found and cut into chips, not yet classified."""

    name: str
    image: Image.Image | None = None
    faces: list[Face] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    chips: np.ndarray | None = None
    error: str | None = None
    width: int = 0  # the photo's size, kept when the decoded image is let go (prepare_many)
    height: int = 0


class AgePredictor:
    """Photo in, one `FacePrediction` per usable face out.

    Decoding, detection and alignment may run in several threads at once (each detection on
    its own detector); the classifier runs one batch at a time, the faces of many photos together.
    """

    def __init__(
        self, classifier: Classifier, info: dict[str, Any], detector: FaceDetector, settings: PackageConfig
    ) -> None:
        self.classifier = classifier
        self.info = info
        self.detector = detector
        self.min_face_pixels = settings.min_face_pixels
        self.flip = settings.flip
        self.flip_margin = settings.flip_margin  # mirror only the faces less sure than this
        self.neighbour_weight = settings.neighbour_weight  # the decision rule (inference.decide_groups)
        self.ranges = settings.range_list()
        self.image_size = int(info["image_size"])
        # TFLite interpreters keep state between calls: one classifier call at a time, and each
        # detection on a detector no other thread holds
        self._lock = threading.Lock()
        self._idle_detectors: queue.SimpleQueue[FaceDetector] = queue.SimpleQueue()
        self._idle_detectors.put(detector)

    @classmethod
    def from_directory(cls, folder: Path, **overrides: Any) -> "AgePredictor":
        """Load from a packaged model folder (a served model's `artifacts/` or the package stage's output).

        The model's own `package` settings (saved at package time) apply, with `overrides` on top;
        a setting missing from both takes `PackageConfig`'s default.
        """
        folder = Path(folder)
        if (folder / "artifacts").is_dir():
            folder = folder / "artifacts"
        if not (folder / INFO_FILE).is_file():
            raise FileNotFoundError(f"{folder}: not a packaged agerange model (no {INFO_FILE})")
        info = json.loads((folder / INFO_FILE).read_text())
        settings = build(
            PackageConfig, {**info.get("predict", {}), **overrides}, f"{folder / INFO_FILE}: predict"
        )
        shipped = folder / DETECTORS[settings.detector][0] if settings.detector in DETECTORS else None
        detector = FaceDetector(
            settings.detector,
            model_path=shipped if shipped is not None and shipped.is_file() else None,
            min_score=settings.min_detector_score,
        )
        return cls(Classifier(folder / CLASSIFIER_FILE), info, detector, settings)

    @contextmanager
    def _borrowed_detector(self) -> Iterator[FaceDetector]:
        """A detector no other thread is using: an idle one, or a new copy when all are busy
        (as many exist as photos were ever detected at once)."""
        try:
            detector = self._idle_detectors.get_nowait()
        except queue.Empty:
            detector = self.detector.copy(threads=1)
        try:
            yield detector
        finally:
            self._idle_detectors.put(detector)

    def face_chips(self, image: Image.Image) -> tuple[list[Face], list[str], np.ndarray]:
        """Usable faces (largest first), reasons for the skipped ones, and their model-size chips."""
        with self._borrowed_detector() as detector:
            found = detector.find_faces(image)
        faces, skipped = select_faces(found, self.min_face_pixels)
        chips = (
            np.stack([chip_pixels(align_face(image, face, CHIP_SIZE), self.image_size) for face in faces])
            if faces
            else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        )
        return faces, [skip.reason for skip in skipped], chips

    def prepare(
        self, source: Path | bytes | Image.Image, name: str | None = None, keep_image: bool = True
    ) -> PreparedPhoto:
        """Decode a photo (a file, its bytes or a decoded image) and cut its faces into chips;
        an unreadable photo gives a PreparedPhoto with `error`. Safe to call from several threads.
        Without `keep_image` the decoded photo is let go once its chips are cut (only drawing on
        it needs it; a batch of 12 MP photos holds gigabytes)."""
        label = name or (str(source) if isinstance(source, Path) else "image")
        try:
            image = source if isinstance(source, Image.Image) else read_image(source, label)
            faces, skipped, chips = self.face_chips(image)
        except ImageError as error:
            return PreparedPhoto(label, error=str(error))
        except Exception as error:  # one photo that breaks something must not stop a folder of them
            log.debug("%s: failed", label, exc_info=True)
            return PreparedPhoto(
                label, error=f"{label}: could not be processed ({type(error).__name__}: {error})"
            )
        kept = image if keep_image else None
        return PreparedPhoto(label, kept, faces, skipped, chips, width=image.width, height=image.height)

    def probabilities(self, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The classifier's outputs and embeddings for model-size chips, with this predictor's
        mirror-image settings (not thread-safe: `classify` holds the lock)."""
        return self.classifier(
            chips, flip=self.flip, flip_margin=self.flip_margin, neighbour_weight=self.neighbour_weight
        )

    def classify(self, prepared: list[PreparedPhoto]) -> list[tuple[PhotoPrediction, np.ndarray]]:
        """Predictions and face embeddings for prepared photos: all their faces in one batch."""
        chips = [photo.chips for photo in prepared if photo.chips is not None and len(photo.chips)]
        if chips:
            with self._lock:
                probabilities, embeddings = self.probabilities(np.concatenate(chips))
        answers, start = [], 0
        for photo in prepared:
            count = 0 if photo.chips is None else len(photo.chips)
            rows = slice(start, start + count)
            start += count
            if photo.error is not None:
                answers.append((PhotoPrediction(photo.name, error=photo.error), np.zeros((0, 0), np.float32)))
                continue
            result = self._photo_result(photo, probabilities[rows] if count else None)
            answers.append((result, embeddings[rows] if count else np.zeros((0, 0), np.float32)))
        return answers

    def _photo_result(self, photo: PreparedPhoto, probabilities: np.ndarray | None) -> PhotoPrediction:
        result = PhotoPrediction(photo.name, photo.width, photo.height, skipped=list(photo.skipped))
        if probabilities is None:
            why = "no face found" if not photo.skipped else "no face large enough to classify"
            result.skipped.append(why)
            return result
        groups, ages = decode_probabilities(probabilities, self.neighbour_weight)
        group_probs = group_probabilities(probabilities)
        estimates, intervals = age_in_group(probabilities, groups), age_interval(probabilities, 0.8)
        in_ranges = self.range_answers(probabilities)
        for index, (face, group, probs) in enumerate(zip(photo.faces, groups, group_probs, strict=True)):
            result.faces.append(
                FacePrediction(
                    face=index,
                    box=[round(v, 1) for v in face.box],
                    detector_score=round(face.score, 3),
                    eye_spacing=round(face.eye_spacing, 3),
                    age_group=group_name(int(group)),
                    group_index=int(group),
                    probability=round(float(probs[group]), 4),
                    expected_age=round(float(ages[index]), 1),
                    age_estimate=int(estimates[index]),
                    age_interval=[int(year) for year in intervals[index]],
                    probabilities={
                        name: round(float(p), 4)
                        for name, p in zip(self.info["class_names"], probs, strict=True)
                    },
                    **(in_ranges[index] if in_ranges else {}),
                )
            )
        return result

    def predict_image(self, image: Image.Image, name: str) -> tuple[PhotoPrediction, np.ndarray]:
        """Predictions for one decoded photo, and the embeddings of its faces (for drift)."""
        return self.classify([self.prepare(image, name)])[0]

    def range_answers(self, probabilities: np.ndarray) -> list[dict[str, Any]]:
        """Each face's answer in `package.ranges` (decided like the groups), [] when none are set."""
        if self.ranges is None:
            return []
        range_probs = range_probabilities(probabilities, self.ranges)
        chosen = decide_groups(range_probs, self.neighbour_weight)
        return [
            {"age_range": range_name(*self.ranges[pick]), "range_probability": round(float(row[pick]), 4)}
            for pick, row in zip(chosen, range_probs, strict=True)
        ]

    def prepare_many(
        self,
        sources: Sequence[Path | bytes],
        names: Sequence[str] | None = None,
        workers: int = 2,
        keep_images: bool = True,
    ) -> list[PreparedPhoto]:
        """`prepare` for many photos in `workers` threads, in order. They keep their chips, so several
        classifiers or settings can be measured on one decoding and detection (`predict_prepared`),
        and their decoded images unless `keep_images` is False (only drawing on them needs those)."""
        labels = list(names) if names is not None else [None] * len(sources)
        if len(labels) != len(sources):
            raise ValueError(f"prepare_many: {len(sources)} photos but {len(labels)} names")
        with ThreadPoolExecutor(max(1, workers)) as pool:
            return list(pool.map(self.prepare, sources, labels, [keep_images] * len(sources)))

    def predict_prepared(
        self, prepared: Sequence[PreparedPhoto], batch_photos: int = 32
    ) -> list[PhotoPrediction]:
        """Predictions for photos prepared earlier, by this predictor or another with the same detector
        settings and chip size, classified `batch_photos` photos at a time."""
        return [
            result
            for start in range(0, len(prepared), batch_photos)
            for result, _ in self.classify(list(prepared[start : start + batch_photos]))
        ]

    def predict_file(self, source: Path | bytes, name: str | None = None) -> PhotoPrediction:
        """Predictions for a photo file or its bytes; an unreadable photo gives a result with `error`."""
        return self.classify([self.prepare(source, name)])[0][0]

    def predict_many(
        self, sources: Sequence[Path | bytes], names: Sequence[str] | None = None, workers: int = 2
    ) -> list[PhotoPrediction]:
        """Predictions for several photos: decoded and detected in `workers` threads, their faces
        classified in one batch."""
        batch = max(1, len(sources))
        return [result for _, result in self.stream(sources, batch, workers, names, keep_images=False)]

    def stream(
        self,
        photos: Sequence[Path | bytes],
        batch_photos: int = 32,
        workers: int = 2,
        names: Sequence[str] | None = None,
        keep_images: bool = False,
    ) -> Iterator[tuple[PreparedPhoto, PhotoPrediction]]:
        """Predictions photo by photo, in order, for a long list: the next `batch_photos` are
        decoded and detected in `workers` threads while the current batch is classified.
        `names` label the photos (default: their paths); `keep_images` as in `prepare`."""
        labels = list(names) if names is not None else [None] * len(photos)
        batches = [
            [(photo, label, keep_images) for photo, label in zip(
                photos[start : start + batch_photos], labels[start : start + batch_photos], strict=True)]
            for start in range(0, len(photos), batch_photos)
        ]  # fmt: skip
        with ThreadPoolExecutor(max(1, workers)) as pool:
            pending = [pool.submit(self.prepare, *photo) for photo in batches[0]] if batches else []
            for index in range(len(batches)):
                prepared = [future.result() for future in pending]
                following = batches[index + 1] if index + 1 < len(batches) else []
                pending = [pool.submit(self.prepare, *photo) for photo in following]
                for photo, (result, _) in zip(prepared, self.classify(prepared), strict=True):
                    yield photo, result


def load_predictor(model: str, store: str | Path | None = None, **settings: Any) -> AgePredictor:
    """An AgePredictor from a registry or run URI (`models:/agerange@champion`,
    `runs:/ID/serving_model/<hash>`)
    or from a packaged model folder (the package stage's `data/serving`).

    `store` is where a registry or run URI lives (`tracking.tracking_uri`: a folder or a URI;
    None means $MLFLOW_TRACKING_URI, else mlruns/)."""
    if model.startswith(("models:/", "runs:/")):
        # imported here: MLflow takes seconds to import, and a packaged folder needs none of it
        from agerange import registry, tracking

        tracking.open_store(store)
        try:
            folder = registry.download_model(model)
        except Exception as error:  # MLflow raises its own types for unknown models and aliases
            raise FileNotFoundError(
                f"{model}: cannot load this model ({str(error).splitlines()[0]})"
            ) from error
        return AgePredictor.from_directory(folder, **settings)
    return AgePredictor.from_directory(Path(model), **settings)


def predict_path_metrics(predictor: AgePredictor, photos: list[Path], groups: np.ndarray) -> dict[str, float]:
    """Accuracy of the whole predict path (decode, detect, align, classify) on labelled photos.

    The largest face of each photo is its answer; a photo with no face found counts as wrong,
    as it would for a user. Returns accuracy, within_one, faces_found (shares) and n.
    """
    return answer_metrics([result for _, result in predictor.stream(photos)], groups)


def answer_metrics(results: Sequence[PhotoPrediction], groups: np.ndarray) -> dict[str, float]:
    """Accuracy of the predictions of labelled photos (`groups`, in the same order): the largest
    face of each photo is its answer; a photo with no face found counts as wrong."""
    predicted = np.array(
        [result.faces[0].group_index if result.faces else metrics.NO_ANSWER for result in results],
        dtype=np.int64,
    )
    return {
        "accuracy": metrics.exact_accuracy(predicted, groups),
        "within_one": metrics.within_one(predicted, groups),
        "faces_found": float((predicted != metrics.NO_ANSWER).mean()),
        "n": len(results),
    }


def find_photos(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """The photos named, with folders searched recursively for JPEG, PNG and WebP files.

    Returns the photo paths and one error line per argument that gave nothing (missing path,
    empty folder). A file named directly is always tried, whatever its extension.
    """
    photos, errors = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
            if not found:
                errors.append(f"{path}: empty folder (no JPEG, PNG or WebP files)")
            photos.extend(found)
        elif path.is_file():
            photos.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return photos, errors


def annotated_names(photos: Sequence[Path]) -> dict[str, str]:
    """The file name of each photo's annotated copy (`--annotate`), by the photo's path:
    `<stem>.annotated.jpg`, and where stems clash (img.jpg and img.png, or a/img.jpg and b/img.jpg)
    the path from the clashing photos' common folder instead, so no copy overwrites another."""
    paths = list(dict.fromkeys(Path(photo) for photo in photos))  # a photo named twice: one copy
    stems = Counter(path.stem for path in paths)
    clashing = [path for path in paths if stems[path.stem] > 1]
    common = Path(os.path.commonpath([str(path.absolute()) for path in clashing])) if clashing else None
    names, taken = {}, set()
    for path in paths:
        if stems[path.stem] == 1:
            name = f"{path.stem}.annotated.jpg"
        else:
            relative = path.absolute().relative_to(common) if common != path.absolute() else Path(path.name)
            name = f"{'__'.join(relative.parts)}.annotated.jpg"
        base, count = name, 1
        while name in taken:  # two spellings of one path, or a folder named like a flattened path
            count += 1
            name = base.replace(".annotated.jpg", f".{count}.annotated.jpg")
        taken.add(name)
        names[str(path)] = name
    return names


def result_rows(results: list[PhotoPrediction], photo_ids: Sequence | None = None) -> list[dict[str, Any]]:
    """Flat rows for CSV, tables and the served model: one per face.

    `photo` is each result's name, or its entry in `photo_ids`. A photo with no usable face or
    an error gets one row with `face` None and `note` saying why, so no photo goes missing;
    faces skipped in a photo are noted on its first face's row, a head turned near profile on its own.
    """
    rows = []
    for index, result in enumerate(results):
        photo = result.photo if photo_ids is None else photo_ids[index]
        if result.error or not result.faces:
            rows.append({"photo": photo, "face": None, "note": result.error or "; ".join(result.skipped)})
        for face in result.faces:
            rows.append(
                {
                    "photo": photo,
                    "face": face.face,
                    "x0": face.box[0],
                    "y0": face.box[1],
                    "x1": face.box[2],
                    "y1": face.box[3],
                    "detector_score": face.detector_score,
                    "eye_spacing": face.eye_spacing,
                    "age_group": face.age_group,
                    "probability": face.probability,
                    "expected_age": face.expected_age,
                    "age_estimate": face.age_estimate,
                    "age_low": face.age_interval[0],
                    "age_high": face.age_interval[1],
                    "age_range": face.age_range or "",
                    "note": "; ".join([*(result.skipped if face.face == 0 else []), *_face_notes(face)]),
                }
            )
    return rows


def _face_notes(face: FacePrediction) -> list[str]:
    """Warnings about one face's answer: a head turned near profile, which the training chips
    almost never show (the most turned FairFace photos are answered worst; README)."""
    if face.eye_spacing < PROFILE_EYE_SPACING:
        return [f"head turned away (eye spacing {face.eye_spacing:.2f}): the answer is less reliable"]
    return []


def format_table(results: list[PhotoPrediction]) -> str:
    """A readable table: photo, face, box, age group, probability, age (its 80% interval), notes."""
    lines = [
        f"{'photo':<40} {'face':>4}  {'box (x0,y0,x1,y1)':<22} {'age group':<22} {'prob':>5} "
        f"{'age (80%)':>12}  note"
    ]
    for row in result_rows(results):
        name = row["photo"] if len(row["photo"]) <= 40 else "..." + row["photo"][-37:]
        if row["face"] is None:
            lines.append(f"{name:<40} {'-':>4}  {'':<22} {'':<22} {'':>5} {'':>12}  {row['note']}")
            continue
        box = ",".join(f"{row[k]:.0f}" for k in ("x0", "y0", "x1", "y1"))
        age = f"{row['age_estimate']} ({row['age_low']}-{row['age_high']})"
        in_range = f"range {row['age_range']}" if row["age_range"] else ""
        note = "; ".join(part for part in (in_range, row["note"]) if part)
        lines.append(
            f"{name:<40} {row['face']:>4}  {box:<22} {row['age_group']:<22} "
            f"{row['probability']:>5.2f} {age:>12}  {note}"
        )
    return "\n".join(lines)


def annotate(image: Image.Image, result: PhotoPrediction) -> Image.Image:
    """A copy of the photo with each face's box and age group drawn on it."""
    from PIL import ImageDraw, ImageFont

    copy = image.copy()
    draw = ImageDraw.Draw(copy)
    width = max(2, round(max(image.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 40)))
    for face in result.faces:
        draw.rectangle(face.box, outline=(255, 200, 0), width=width)
        label = f"{face.age_group} {face.probability:.0%}"
        left, top, right, bottom = draw.textbbox((face.box[0], face.box[1]), label, font=font)
        top_y = max(0, face.box[1] - (bottom - top) - 2 * width)
        draw.rectangle((left, top_y, right + 2 * width, top_y + bottom - top + 2 * width), fill=(255, 200, 0))
        draw.text((face.box[0] + width, top_y), label, fill=(0, 0, 0), font=font)
    return copy
