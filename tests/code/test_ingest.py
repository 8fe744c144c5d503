import io
import tarfile
from pathlib import Path

import pytest

from agerange.files import ChecksumError, sha256_file, verify_sha256
from agerange.ingest import (
    AGE_OUT_OF_RANGE,
    CONFLICTING_DUPLICATE,
    DUPLICATE,
    UNDECODABLE_IMAGE,
    UNPARSABLE_NAME,
    UNSAFE_MEMBER,
    ArchiveError,
    describe_image,
    extract_archive,
    ingest,
)
from tests.conftest import jpeg_bytes, make_tar


def _trust(path: Path) -> dict[str, str]:
    return {path.name: sha256_file(path)}


def _malicious_tar(path: Path) -> Path:
    """An archive mixing one good image with every kind of member that must never be extracted."""
    good = jpeg_bytes(seed=1)
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes = b"x", **fields) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data) if fields.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.size else None)

        add("faces/30_0_0_20170101000000000.jpg.chip.jpg", good)
        add("/etc/evil_absolute.jpg")
        add("faces/../../escape.jpg")
        add("faces/link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add("faces/hard.jpg", type=tarfile.LNKTYPE, linkname="faces/30_0_0_20170101000000000.jpg.chip.jpg")
        add("faces/device", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("faces/pipe", type=tarfile.FIFOTYPE)
    return path


def test_malicious_members_are_refused_and_named(tmp_path):
    archive = _malicious_tar(tmp_path / "evil.tar")
    target = tmp_path / "out"
    written, refused = extract_archive(archive, target)
    assert written == ["faces/30_0_0_20170101000000000.jpg.chip.jpg"]
    reasons = {item.path: item.detail for item in refused}
    assert set(reasons) == {
        "/etc/evil_absolute.jpg", "faces/../../escape.jpg", "faces/link.jpg",
        "faces/hard.jpg", "faces/device", "faces/pipe",
    }  # fmt: skip
    assert "absolute" in reasons["/etc/evil_absolute.jpg"]
    assert "'..'" in reasons["faces/../../escape.jpg"]
    assert "link" in reasons["faces/link.jpg"] and "link" in reasons["faces/hard.jpg"]
    assert "device" in reasons["faces/device"] and "pipe" in reasons["faces/pipe"]
    assert all(item.reason == UNSAFE_MEMBER for item in refused)
    # Nothing landed outside the target folder, and no link was made inside it.
    assert not (tmp_path / "escape.jpg").exists()
    assert sorted(p.name for p in target.rglob("*")) == ["30_0_0_20170101000000000.jpg.chip.jpg", "faces"]


def test_ingest_quarantines_each_bad_file_with_one_reason_and_keeps_the_rest(tmp_path):
    same = jpeg_bytes(seed=7)
    conflicting = jpeg_bytes(seed=8)
    truncated = jpeg_bytes(size=64, seed=9)[:300]
    files = {
        "30_0_0_20170101000000001.jpg.chip.jpg": jpeg_bytes(seed=1),
        "31_1_2_20170101000000002.jpg.chip.jpg": same,
        "31_1_2_20170101000000003.jpg.chip.jpg": same,  # equal labels: kept once
        "23_0_1_20170101000000004.jpg.chip.jpg": conflicting,
        "33_0_1_20170101000000005.jpg.chip.jpg": conflicting,  # same face, other age: both out
        "40_0_0_20170101000000006.jpg.chip.jpg": truncated,
        "41_0_0_20170101000000007.jpg.chip.jpg": b"this is not an image",
        "150_0_0_20170101000000008.jpg.chip.jpg": jpeg_bytes(seed=2),
        # the same face as the first file, labelled out of range: a conflict, so neither is kept
        "0_0_0_20170101000000011.jpg.chip.jpg": jpeg_bytes(seed=5),
        "30_0_0_20170101000000012.jpg.chip.jpg": jpeg_bytes(seed=5),
        "41_0_0_20170101000000013.jpg.chip.jpg": bomb_png(),  # header claims 20000 x 20000 pixels
        "39_1_20170116174525125.jpg.chip.jpg": jpeg_bytes(seed=3),
        "nm0000100_rm1001569280_1955-1-6_2011.jpg": jpeg_bytes(seed=4),
    }
    archive = make_tar(tmp_path / "faces.tar", files)
    metadata, quarantine, counts = ingest(archive, tmp_path / "images", _trust(archive), 1, 116, workers=1)

    assert sorted(metadata["path"]) == [
        "faces/30_0_0_20170101000000001.jpg.chip.jpg",
        "faces/31_1_2_20170101000000002.jpg.chip.jpg",
        "faces/nm0000100_rm1001569280_1955-1-6_2011.jpg",
    ]
    reason_of = dict(zip(quarantine["path"].str.removeprefix("faces/"), quarantine["reason"], strict=True))
    assert reason_of == {
        "31_1_2_20170101000000003.jpg.chip.jpg": DUPLICATE,
        "23_0_1_20170101000000004.jpg.chip.jpg": CONFLICTING_DUPLICATE,
        "33_0_1_20170101000000005.jpg.chip.jpg": CONFLICTING_DUPLICATE,
        "40_0_0_20170101000000006.jpg.chip.jpg": UNDECODABLE_IMAGE,
        "41_0_0_20170101000000007.jpg.chip.jpg": UNDECODABLE_IMAGE,
        "150_0_0_20170101000000008.jpg.chip.jpg": AGE_OUT_OF_RANGE,
        "39_1_20170116174525125.jpg.chip.jpg": UNPARSABLE_NAME,
        "0_0_0_20170101000000011.jpg.chip.jpg": CONFLICTING_DUPLICATE,
        "30_0_0_20170101000000012.jpg.chip.jpg": CONFLICTING_DUPLICATE,
        "41_0_0_20170101000000013.jpg.chip.jpg": UNDECODABLE_IMAGE,
    }
    for path, detail in zip(quarantine["path"], quarantine["detail"], strict=True):
        assert Path(path).name in detail and "\n" not in detail
    assert counts["files_in"] == len(files) == len(metadata) + len(quarantine)
    imdb = metadata.set_index("path").loc["faces/nm0000100_rm1001569280_1955-1-6_2011.jpg"]
    assert imdb["age"] == 56 and imdb["source"] == "imdb_wiki"


def test_truncated_jpeg_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "20_0_0_1.jpg.chip.jpg"
    path.write_bytes(jpeg_bytes(size=64, seed=5)[:-200])
    with pytest.raises(ValueError, match=r"^20_0_0_1\.jpg\.chip\.jpg: truncated \(the file ends"):
        describe_image(path)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("notes.jpg", b"this is not an image", "not an image or corrupt"),
        ("empty.jpg", b"", "empty file (0 bytes)"),
        ("half.jpg", jpeg_bytes(size=64, seed=5)[:300], "truncated"),
    ],
)
def test_unreadable_files_are_named_with_a_reason_in_words_not_a_python_object(tmp_path, name, data, reason):
    """PIL's own message names an in-memory buffer (`<_io.BytesIO object at 0x7f...>`)."""
    from agerange.preprocess import ImageError, read_image

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError) as ingest_error:
        describe_image(path)
    with pytest.raises(ImageError) as predict_error:
        read_image(path, name)
    with pytest.raises(ImageError) as bytes_error:
        read_image(data, name)  # the served model and the web page pass bytes
    for message in (str(ingest_error.value), str(predict_error.value), str(bytes_error.value)):
        assert message.startswith(f"{name}: {reason}"), message
        assert "<_io." not in message and "object at 0x" not in message and "\n" not in message


def test_describe_image_measures_size_mode_and_quality(tmp_path):
    path = tmp_path / "face.jpg"
    path.write_bytes(jpeg_bytes(size=200, seed=6))
    sharp = describe_image(path)
    assert (sharp["width"], sharp["height"], sharp["mode"]) == (200, 200, "RGB")
    assert 0.3 < sharp["brightness"] < 0.7  # uniform noise averages mid-grey
    from PIL import Image, ImageFilter

    Image.open(path).filter(ImageFilter.GaussianBlur(4)).save(tmp_path / "blurred.jpg")
    assert describe_image(tmp_path / "blurred.jpg")["blur"] < sharp["blur"] / 10


def test_wrong_checksum_is_a_one_line_error_naming_the_file(tmp_path):
    archive = make_tar(tmp_path / "faces.tar", {"30_0_0_1.jpg.chip.jpg": jpeg_bytes()})
    with pytest.raises(ChecksumError) as error:
        verify_sha256(archive, {"UTKFace.tar": "0" * 64})
    assert str(archive) in str(error.value) and "wrong checksum" in str(error.value)
    # And the ingest step writes nothing when the checksum is wrong.
    with pytest.raises(ChecksumError):
        ingest(archive, tmp_path / "images", {"UTKFace.tar": "0" * 64}, 1, 116)
    assert not (tmp_path / "images").exists()


def test_an_existing_output_survives_a_failed_ingest(tmp_path):
    good = make_tar(tmp_path / "good.tar", {"30_0_0_1.jpg.chip.jpg": jpeg_bytes()})
    ingest(good, tmp_path / "images", _trust(good), 1, 116, workers=1)
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    with pytest.raises(ArchiveError, match="empty archive"):
        ingest(empty, tmp_path / "images", _trust(empty), 1, 116)
    assert (tmp_path / "images" / "faces" / "30_0_0_1.jpg.chip.jpg").is_file()


@pytest.mark.parametrize(
    ("content", "message"), [(None, "archive not found"), (b"not a tar", "not a readable tar")]
)
def test_missing_or_unreadable_archive(tmp_path, content, message):
    archive = tmp_path / "data.tar"
    if content is not None:
        archive.write_bytes(content)
    with pytest.raises(ArchiveError, match=message):
        extract_archive(archive, tmp_path / "out")
    # the whole ingest says the same before it hashes anything (a folder is named as one)
    trusted = _trust(archive) if content is not None else {"data.tar": "0" * 64}
    with pytest.raises(ArchiveError, match=message):
        ingest(archive, tmp_path / "images", trusted, 1, 116)
    with pytest.raises(ArchiveError, match="not a file"):
        ingest(tmp_path, tmp_path / "images", {"data.tar": "0" * 64}, 1, 116)


def bomb_png() -> bytes:
    """A tiny PNG whose header claims 20000 x 20000 pixels (PIL refuses it as a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_mini_set_keeps_every_good_image_and_explains_every_rejection(mini_ingested):
    _, metadata, quarantine = mini_ingested
    assert len(metadata) + len(quarantine) == 613
    reasons = quarantine["reason"].value_counts().to_dict()
    assert reasons[UNPARSABLE_NAME] == 5
    assert reasons[CONFLICTING_DUPLICATE] == 8  # four pairs of the same face with different ages
    assert metadata["sha256"].is_unique
    assert set(metadata["age_group"]) == set(range(10))


def test_parallel_and_serial_descriptions_agree(mini_ingested):
    from agerange.ingest import describe_images

    images, metadata, _ = mini_ingested
    paths = [images / p for p in metadata["path"][:80]]
    assert describe_images(paths, workers=2) == describe_images(paths, workers=1)
