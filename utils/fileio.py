"""Crash-safe writes of the files a user keeps: temporary name in the same folder, then rename.

A reader (or a run killed mid-write, or a full disk) sees the old file or the new one, never a
truncated one: `os.replace` is atomic on POSIX within one filesystem, and the temporary name
lives in the destination's folder so the rename never crosses filesystems.

Temporary names are `.tmp-<pid>-<name>` (the destination's suffix is kept, so writers that
dispatch on it, e.g. Keras' `.weights.h5`, still accept them); `remove_stale_temps` deletes the
ones a killed process left behind.

Every OSError while writing becomes a `WriteError`: one line naming the path and the free
space of its filesystem (main.py prints it and exits with status 1).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from typing import IO, Any

from utils.errors import UserError

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
_TEMP_RE = re.compile(r"^\.tmp-(\d+)-")


class WriteError(UserError, OSError):
    """A file could not be written (disk full, read-only, no permission); the message is one
    line with the path and the free space. The previous file at that path is untouched."""


def free_space(path: str) -> str:
    """Human-readable free space of the filesystem holding `path` ("?" when unknown)."""
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return _size(shutil.disk_usage(probe).free)
    except OSError:
        return "?"


def write_error(path: str, err: BaseException) -> WriteError:
    """The one-line WriteError for a failed write of `path`."""
    reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else str(err)
    reason = (reason.strip().splitlines() or [type(err).__name__])[0][:200]
    return WriteError(
        err.errno if isinstance(err, OSError) else errno.EIO,
        f"cannot write {path}: {reason} ({free_space(path)} free on its filesystem); "
        "the previous file, if any, is unchanged",
    )


def check_free_space(path: str, needed_bytes: int) -> None:
    """Raise a WriteError when the filesystem of `path` has less than `needed_bytes` free.

    For writers that do not fail cleanly on a full disk: h5py raises an OSError and then
    crashes the process (segmentation fault) when the failed file object is freed, so the
    check has to come before the write.
    """
    probe = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < needed_bytes:
        raise WriteError(
            errno.ENOSPC,
            f"cannot write {path}: it needs about {_size(needed_bytes)}, only "
            f"{_size(free)} free on its filesystem; free some space (the previous "
            "file, if any, is unchanged)",
        )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def temp_path(path: str) -> str:
    """The temporary name for `path`: same folder, `.tmp-<pid>-<name>`."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{name}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary file path to write `path` through; renamed onto `path` on success.

    For writers that take a path (h5py, Keras `save_weights`, matplotlib `savefig`). On any
    error the temporary file is removed and `path` keeps its old content; an OSError is
    re-raised as a WriteError.

    Example:
      with atomic_path("model_dir/model.weights.h5") as tmp:
          model.save_weights(tmp)
    """
    tmp = temp_path(path)
    _remove(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        if isinstance(err, WriteError):
            raise
        raise write_error(path, err) from err
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; on success it is flushed, fsynced and renamed to `path`.

    Args:
      path: destination file; its folder must exist.
      mode: "w" (text, UTF-8 unless `encoding` is given) or "wb".
      **open_kwargs: passed to `open` (encoding, newline).

    Yields:
      The open file object.

    Raises:
      WriteError: any OSError while writing or renaming (the old `path` is unchanged).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp:
        try:
            with open(tmp, mode, **open_kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise write_error(path, err) from err


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary folder to fill; on success it replaces the folder `path`.

    For writers that produce a folder (TF SavedModel). An existing `path` is moved aside and
    deleted only after the new folder is in place, so a crash leaves either the old or the new
    complete folder (plus a `.tmp-` folder that `remove_stale_temps` deletes).

    Raises:
      WriteError: any OSError while writing or renaming.
    """
    tmp = temp_path(path)
    _remove(tmp)
    os.makedirs(tmp)
    old = None
    try:
        yield tmp
        if os.path.lexists(path):
            old = temp_path(path) + ".old"
            _remove(old)
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        if old is not None and not os.path.lexists(path):
            os.replace(old, path)
            old = None
        if isinstance(err, WriteError):
            raise
        raise write_error(path, err) from err
    except BaseException:
        _remove(tmp)
        raise
    finally:
        if old is not None:
            _remove(old)


def atomic_write_text(path: str, text: str) -> str:
    """Write `text` to `path` through a temporary file and a rename (see `atomic_write`).

    Returns:
      `path`.
    """
    with atomic_write(path, "w", newline="") as f:
        f.write(text)
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write `data` to `path` through a temporary file and a rename; returns `path`."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str) -> list[str]:
    """Delete `.tmp-<pid>-*` files/folders in `folder` whose writer process is gone.

    Only entries of dead processes on this host are removed, so a concurrent writer's
    temporary file survives. Returns the removed paths.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.scandir(folder):
        match = _TEMP_RE.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            _remove(entry.path)
            removed.append(entry.path)
    if removed:
        logger.info("removed %d stale temporary file(s) in %s", len(removed), folder)
    return removed


def host_name() -> str:
    """This machine's host name (for lock files)."""
    return socket.gethostname()
