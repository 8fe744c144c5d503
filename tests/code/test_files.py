"""Atomic writes: an output is the old one or the new one, never missing, half-written or lost."""

import threading

import pytest

from agerange.files import atomic_path, write_json


def test_a_reader_never_finds_the_file_missing_while_it_is_rewritten(tmp_path):
    target = tmp_path / "registration.json"
    write_json({"version": 0}, target)
    missing, done = [], threading.Event()

    def read_until_done():
        while not done.is_set():
            try:
                target.read_bytes()
            except FileNotFoundError:
                missing.append(1)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    for version in range(1, 1001):
        write_json({"version": version}, target)
    done.set()
    reader.join()
    assert not missing and '"version": 1000' in target.read_text()


def test_a_block_that_fails_or_writes_nothing_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json({"old": True}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("the stage failed")
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(target):
        pass
    assert '"old": true' in target.read_text()
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_a_folder_is_replaced_whole_and_kept_when_the_new_one_cannot_take_its_place(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with atomic_path(target) as temporary:
        temporary.mkdir()
        (temporary / "weights").write_text("first")
    with atomic_path(target) as temporary:
        temporary.mkdir()
        (temporary / "weights").write_text("second")
    assert (target / "weights").read_text() == "second"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]

    import os

    real_replace = os.replace

    def refuse_the_new_folder(source, destination):
        if str(source).endswith("/model") and ".model." in str(source):
            raise OSError("disk full")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", refuse_the_new_folder)
    with pytest.raises(OSError, match="disk full"), atomic_path(target) as temporary:
        temporary.mkdir()
        (temporary / "weights").write_text("third")
    assert (target / "weights").read_text() == "second"
