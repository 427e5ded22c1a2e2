"""Which files of an input folder are safe to read: regular files inside the folder, of a size
that fits in memory.

Used by the folder data source (training) and by predict. A file is skipped, with a reason, when:

- it is not a regular file (a FIFO would block the reader forever; devices and sockets are
  not images either);
- it is a symlink whose target lies outside the input folder (unless `follow_symlinks`): a
  folder of images must not make the run read `/etc/passwd` or another user's files;
- its JPEG SOF / PNG IHDR / GIF / BMP header declares more than `max_image_pixels` pixels
  (default as PIL's `Image.MAX_IMAGE_PIXELS`, 89,478,485): a 1 MB PNG of 20000x20000 pixels
  decodes to 1.2 GB. Only the header is read; files of other formats are left to the decoder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import struct
from collections import Counter
from collections.abc import Iterable

logger = logging.getLogger(__name__)

# NOTE: PIL.Image.MAX_IMAGE_PIXELS (its decompression-bomb limit).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
NOT_REGULAR = "not a regular file"
OUTSIDE_LINK = "symlink out of the folder"
TOO_LARGE = "too many pixels"
# JPEG start-of-frame markers that carry the image size (not DHT C4, JPG C8, DAC CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_MAX_JPEG_SCAN = 1 << 20  # give up looking for the SOF after this many bytes


@dataclasses.dataclass(frozen=True)
class FilePolicy:
    """What an input folder may contain.

    Attributes:
      follow_symlinks: read symlinks whose target is outside the folder.
      max_image_pixels: skip images whose header declares more pixels; 0 = no limit.
    """

    follow_symlinks: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def image_size_from_header(path: str) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, GIF or BMP header, without decoding; None if unknown."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
            if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head[:6] in (b"GIF87a", b"GIF89a"):
                return struct.unpack("<HH", head[6:10])
            if head.startswith(b"BM") and len(head) >= 26:
                width, height = struct.unpack("<ii", head[18:26])
                return abs(width), abs(height)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_size(f)
    except (OSError, struct.error):
        return None
    return None


def _jpeg_size(f) -> tuple[int, int] | None:
    f.seek(2)
    while f.tell() < _MAX_JPEG_SCAN:
        byte = f.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            continue
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:  # no length field
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if code in _SOF_MARKERS:
            data = f.read(5)
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return width, height
        if code == 0xDA:  # start of scan before any SOF
            return None
        f.seek(length - 2, os.SEEK_CUR)
    return None


def _inside(path: str, root: str) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def skip_reason(path: str, root: str | None, policy: FilePolicy) -> str | None:
    """Why `path` must not be read (a short reason with the detail), or None when it is fine.

    Never opens anything but a regular file, so a FIFO cannot block.

    Args:
      path: the file.
      root: the input folder it was found in (None: a file given directly, no link check).
      policy: symlink and size limits.
    """
    try:
        is_link = os.path.islink(path)
        mode = os.stat(path).st_mode
    except OSError as err:
        return f"{NOT_REGULAR} ({err.strerror})"
    if is_link and root is not None and not policy.follow_symlinks and not _inside(path, root):
        return f"{OUTSIDE_LINK} (-> {os.path.realpath(path)}; --follow_symlinks reads it)"
    if not stat.S_ISREG(mode):
        kind = (
            "FIFO"
            if stat.S_ISFIFO(mode)
            else "socket"
            if stat.S_ISSOCK(mode)
            else "device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a file"
        )
        return f"{NOT_REGULAR} ({kind})"
    if policy.max_image_pixels:
        size = image_size_from_header(path)
        if size is not None and size[0] * size[1] > policy.max_image_pixels:
            return (
                f"{TOO_LARGE} ({size[0]}x{size[1]} = {size[0] * size[1]:,} > "
                f"--max_image_pixels {policy.max_image_pixels:,})"
            )
    return None


def dir_is_followed(path: str, root: str, policy: FilePolicy) -> bool:
    """Whether a sub-folder (possibly a symlink) of `root` may be listed."""
    return not os.path.islink(path) or policy.follow_symlinks or _inside(path, root)


# (where, path) of every skipped file logged by this process: a folder listed again (the train
# input of every epoch of a seeded run) names its skipped files once per run.
_REPORTED: set[tuple[str, str]] = set()


def report_skipped(skipped: Iterable[tuple[str, str]], where: str, max_lines: int = 10) -> Counter:
    """Log the skipped (path, reason) pairs not logged before in this run: the first few one per
    line, then the totals.

    Returns:
      Counts per reason kind (the text before " ("), of all of `skipped`.
    """
    skipped = list(skipped)
    counts = Counter(reason.split(" (", 1)[0] for _, reason in skipped)
    new = [(path, reason) for path, reason in skipped if (where, path) not in _REPORTED]
    _REPORTED.update((where, path) for path, _ in new)
    for path, reason in new[:max_lines]:
        logger.warning("%s: skipping %s: %s", where, path, reason)
    if new:
        logger.warning(
            "%s: skipped %d file(s): %s",
            where,
            len(skipped),
            ", ".join(f"{n} {kind}" for kind, n in counts.most_common()),
        )
    return counts
