"""Tests for hybrid/checkpoint.py's atomic writes (checkpoint contents are tested in test_train.py)."""

import os

import pytest

from hybrid.checkpoint import atomic_write


def test_atomic_write_replaces_whole_files_with_ordinary_permissions(tmp_path):
    path = tmp_path / "table.md"
    umask = os.umask(0o022)
    try:
        atomic_write(path, lambda f: f.write(b"first"))
        assert path.read_bytes() == b"first" and path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o600)
        atomic_write(path, lambda f: f.write(b"second"))
        assert path.read_bytes() == b"second" and path.stat().st_mode & 0o777 == 0o600  # kept
    finally:
        os.umask(umask)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write(path, lambda f: f.write(b"old"))

    def crash(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]
