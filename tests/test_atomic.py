"""clippo.atomic: the new file appears whole or not at all; the old one survives any failure."""

from __future__ import annotations

import os

import pytest

from clippo.atomic import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_writes_create_parents_and_replace(tmp_path):
    path = tmp_path / "a" / "b" / "f.json"
    assert write_json_atomic({"b": 1, "a": [1.5]}, path, sort_keys=True) == path
    assert path.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    write_text_atomic(path, "héllo")
    assert path.read_bytes() == "héllo".encode()
    write_bytes_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["f.json"]


def test_failures_keep_the_old_file_and_leave_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    with pytest.raises(TypeError):  # unserialisable: fails before anything is written
        write_json_atomic({"x": object()}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_written_files_are_readable_by_others(tmp_path):
    from clippo.atomic import write_text_atomic

    path = write_text_atomic(tmp_path / "results.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_file_writes_through_its_own_descriptor(tmp_path):
    """The temp file is written through the fd mkstemp created (O_EXCL): a link planted at any
    temp-like name, or swapped in, never receives the data; a failed block leaves nothing."""
    from clippo.atomic import atomic_file, temp_files

    outside = tmp_path / "outside"
    outside.write_text("precious")
    (tmp_path / "f.bin.tmp").symlink_to(outside)
    with atomic_file(tmp_path / "f.bin") as f:
        (tmp_name,) = temp_files(tmp_path, "f.bin")
        os.unlink(tmp_name)  # someone swaps the temp name for a link mid-write
        os.symlink(outside, tmp_name)
        f.write(b"data")
    assert outside.read_text() == "precious"
    assert (tmp_path / "f.bin").is_symlink()  # the rename moved the swapped-in link, not data
    (tmp_path / "f.bin").unlink()
    with atomic_file(tmp_path / "f.bin") as f:
        f.write(b"data")
    assert (tmp_path / "f.bin").read_bytes() == b"data"
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "g.bin") as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert not (tmp_path / "g.bin").exists() and temp_files(tmp_path) == []
    leftover = tmp_path / ".h.json.x1y2z3ab.tmp"
    leftover.write_bytes(b"")
    assert temp_files(tmp_path) == [leftover] and temp_files(tmp_path, "g*") == []
