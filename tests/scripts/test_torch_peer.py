"""scripts/torch_peer.py: the benchmarks' PyTorch peer runs in its own process, never next to
TensorFlow (torch imported after TensorFlow crashed the benchmark scripts with a segfault)."""

import ast
import os
import subprocess
import sys

import pytest

from scripts.torch_peer import PeerError, TorchPeer
from tests.helpers import ROOT


def _timm_imports() -> bool:
    """Whether timm imports here (checked in a child: this process stays free of torch)."""
    done = subprocess.run([sys.executable, "-c", "import timm"], capture_output=True, check=False)
    return done.returncode == 0


def _imported_roots(path: str) -> set[str]:
    """The top-level packages `path` imports, at module level or inside functions."""
    roots = set()
    with open(path, encoding="utf-8") as f:
        for node in ast.walk(ast.parse(f.read(), path)):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("script", ["bench_model.py", "bench_inference.py"])
def test_the_benchmark_scripts_never_import_torch_next_to_tensorflow(script):
    """Before: their timm variant imported torch and timm into the TensorFlow process."""
    roots = _imported_roots(os.path.join(ROOT, "scripts", script))
    assert "tensorflow" in roots or "keras" in roots  # the check sees their imports
    assert not roots & {"torch", "timm", "torchvision"}, roots & {"torch", "timm"}
    assert {"torch", "timm"} <= _imported_roots(os.path.join(ROOT, "scripts", "torch_peer.py"))


def test_a_peer_that_cannot_build_its_model_says_why_in_one_line():
    with pytest.raises(PeerError) as info:
        TorchPeer("no_such_timm_model", batch=1, image_size=32)
    assert "\n" not in str(info.value) and str(info.value)


@pytest.mark.slow
@pytest.mark.skipif(not _timm_imports(), reason="torch and timm (with torchvision) not importable")
@pytest.mark.parametrize("layout, phase", [("channels_last", "infer"), ("nchw", "train")])
def test_the_peer_times_its_own_calls(layout, phase):
    peer = TorchPeer("efficientnet_b0", 2, 32, phase=phase, layout=layout, num_classes=10)
    try:
        assert set(peer.versions) == {"ready", "torch", "timm"}
        peer.warmup(1)
        seconds = peer.time_calls(3)
        assert len(seconds) == 3 and all(s > 0 for s in seconds)
        assert peer.peak_rss_gb() > 0.05
    finally:
        peer.close()
