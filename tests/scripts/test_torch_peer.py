"""scripts/torch_peer.py: the benchmarks' PyTorch peer runs in its own process, never next to
TensorFlow (torch imported after TensorFlow crashed the benchmark scripts with a segfault)."""

import subprocess
import sys

import pytest

from scripts.torch_peer import PeerError, TorchPeer
from tests.helpers import ROOT


def _timm_imports() -> bool:
    """Whether timm imports here (checked in a child: this process stays free of torch)."""
    done = subprocess.run([sys.executable, "-c", "import timm"], capture_output=True, check=False)
    return done.returncode == 0


def test_the_benchmark_scripts_keep_torch_out_of_their_process():
    """The timm variant of each script is set up without loading torch into the TensorFlow
    process, whether or not torch and timm work here."""
    code = (
        "import argparse, sys\n"
        "from scripts import bench_inference, bench_model\n"
        "args = argparse.Namespace(timm_model='efficientnet_b0', batch_size=1, image_size=32)\n"
        "peer = bench_model._timm_variant(args, 'timm', 10, train=False)\n"
        "peers = bench_inference.timm_peers('b0', 1, 1, ['channels_last'])\n"
        "for p in [peer, *peers.values()]:\n"
        "    p is not None and p.close()\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


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
    assert "torch" not in sys.modules or "timm" not in sys.modules
