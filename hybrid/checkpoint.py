"""Checkpoints: written atomically, read only with ``torch.load(..., weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:

    {"format": FORMAT, "step": int, "seconds": float (wall-clock so far),
     "config": {section: {key: value}}, "vocab": str,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "rng": {"torch": ByteTensor, "batches": ByteTensor}}

Writing goes to a temporary file in the same folder, is flushed to disk, then renamed over
the old file, so a crash at any moment leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hybrid.errors import InputError

FORMAT = "hybrid-checkpoint/1"


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp's 0600 would make results unreadable to others
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _file_mode(path: Path) -> int:
    """The permissions ``open(path, "w")`` would give: the existing file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (see the module docstring for its keys) to ``path``."""
    atomic_write(path, lambda file: torch.save({"format": FORMAT, **state}, file))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``, on the CPU.

    Raises:
        InputError: the file is missing, truncated, corrupt, unsafe to unpickle, or not a
            checkpoint of this toolkit.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}; point --resume/--run at a run folder that has one")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as error:
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise InputError(
            f"checkpoint {path} is corrupt or was not written by this toolkit ({reason}); "
            "delete it and train again, or use another run folder"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format", "no format tag") if isinstance(state, dict) else type(state).__name__
        raise InputError(
            f"{path} is not a checkpoint of this toolkit (expected format {FORMAT!r}, found {found!r}); "
            "use a checkpoint written by `hybrid train`"
        )
    return state


class FolderInUse(InputError):
    """Another process holds a run folder's lock (``folder_lock``)."""


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while writing into it.

    A second process that tries to lock the same folder (say, a resumed sweep while an
    orphaned worker still trains there) fails at once instead of interleaving writes. The
    holder removes the temporary files of writes a killed process left unfinished. The
    operating system drops the lock when its holder dies, so a crash never leaves it stale.

    Raises:
        InputError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks, nothing to hold
        yield
        return
    fd = os.open(Path(folder) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderInUse(f"{folder} is in use by another process; wait for it to end or use another folder") from None
    for leftover in Path(folder).glob(".*.tmp"):  # an atomic_write a killed process never finished
        leftover.unlink(missing_ok=True)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
