"""Small file helpers shared by the runtime modes."""

from __future__ import annotations

import os


def atomic_write_text(path: str, text: str) -> str:
    """Write `text` to `path` through a temporary file and a rename.

    A reader (or a run killed mid-write) sees the old file or the new one, never a truncated
    one: `os.replace` is atomic on POSIX within one filesystem.

    Args:
      path: destination file; its folder must exist.
      text: the whole content.

    Returns:
      `path`.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
