"""Fine-tuning: --pretrained, freezing (--freeze_until, --freeze_bn, --unfreeze_epoch)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import main
from config.loader import ConfigError, load_config
from model import build_model
from runtime import finetune
from runtime.errors import RunError
from runtime.step import StepConfig, make_train_step
from runtime.train import build_run
from tests.helpers.tiny_run import TINY_MPARAMS, tiny_args, tiny_params
from utils.optimizers import OptimizerConfig, build_optimizer

CFG = "config/efficientnet_v2/s_cfg.py"


def tiny_model(num_classes=10, mparams=TINY_MPARAMS):
    return build_model(load_config(CFG, mparams), num_classes=num_classes)


def one_step(model, l2=1e-3):
    """One SGD step on random data through the real training step; returns it."""
    opt = build_optimizer(OptimizerConfig(name="sgd"), 0.1, model.trainable_variables)
    opt.build(model.trainable_variables)
    step = make_train_step(model, opt, config=StepConfig(label_smoothing=0.0, l2_weight_decay=l2))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = np.eye(model.output_shape[-1], dtype="float32")[[0, 1, 2, 3]]
    step((tf.constant(x), tf.constant(y)))
    return opt


def snapshot(model):
    return {v.path: np.array(v.numpy()) for v in model.weights}


def test_freeze_until_head_trains_only_the_classifier():
    model = tiny_model()
    finetune.apply_freezing(model, "head", freeze_bn=False)
    assert {v.path.split("/")[0] for v in model.trainable_variables} == {"logits"}
    before = snapshot(model)
    opt = one_step(model)
    after = snapshot(model)
    changed = {p.split("/")[0] for p in before if not np.array_equal(before[p], after[p])}
    # Frozen BN runs in inference mode: its moving statistics do not move either.
    assert changed == {"logits"}
    # The optimizer holds slots only for what trains (SGD: none besides the counters).
    assert len(opt.variables) < 5


def test_freeze_until_stage_and_layer_names():
    model = tiny_model()
    finetune.apply_freezing(model, "stage4", freeze_bn=False)
    trainable = {v.path.split("/")[0] for v in model.trainable_variables}
    assert not any(n.startswith(("stem", "stage1_", "stage4_")) for n in trainable)
    assert "stage5_block1" in trainable and "logits" in trainable
    finetune.apply_freezing(model, "stem_conv", freeze_bn=False)
    assert "stem_conv" not in {v.path.split("/")[0] for v in model.trainable_variables}
    assert "stem_bn" in {v.path.split("/")[0] for v in model.trainable_variables}
    finetune.apply_freezing(model, None, freeze_bn=False)  # everything trains again
    assert (
        len(model.trainable_variables)
        == len([v for v in model.weights if v.trainable])
        == len(tiny_model().trainable_variables)
    )


def test_freeze_bn_keeps_statistics_and_excludes_bn_from_training():
    model = tiny_model()
    finetune.apply_freezing(model, None, freeze_bn=True)
    assert not [v for v in model.trainable_variables if "bn" in v.path]
    before = snapshot(model)
    one_step(model)
    after = snapshot(model)
    bn = [p for p in before if "bn" in p]
    assert bn and all(np.array_equal(before[p], after[p]) for p in bn)
    assert not np.array_equal(before["stem_conv/kernel"], after["stem_conv/kernel"])


def test_frozen_variables_get_no_l2_penalty():
    """The step's L2 term covers trainable variables only: a frozen backbone adds nothing."""
    from utils.optimizers import l2_penalty

    model = tiny_model()
    full = float(l2_penalty(model.trainable_variables, 1.0))
    finetune.apply_freezing(model, "head", freeze_bn=False)
    head = float(l2_penalty(model.trainable_variables, 1.0))
    logits = model.get_layer("logits")
    # NVIDIA's keras l2(wd) on the classifier's kernel and bias (utils.optimizers).
    expected = float((logits.kernel.numpy() ** 2).sum() + (logits.bias.numpy() ** 2).sum())
    assert head == pytest.approx(expected, rel=1e-5) and head < full


def test_freeze_until_errors():
    model = tiny_model()
    with pytest.raises(
        ConfigError,
        match=r"--freeze_until 'stage9_block1' names no layer .*"
        r"use stem, stage1..stage6, head",
    ):
        finetune.freeze_boundary(model, "stage9_block1")
    with pytest.raises(ConfigError, match="freezes every layer: nothing left to train"):
        finetune.freeze_boundary(model, "logits")


def test_the_log_names_phases_and_what_trains_in_them():
    two_phase = finetune.FreezePlan.from_params({"unfreeze_epoch": 2, "freeze_bn": True})
    assert two_phase.describe(0) == "phase 1/2 (classifier only, BatchNorm frozen)"
    assert two_phase.describe(2) == "phase 2/2 (all layers, BatchNorm frozen)"
    one_phase = finetune.FreezePlan.from_params({"freeze_until": "stage4"})
    assert one_phase.describe(0) == "layers after stage4"


def test_two_phase_plan_schedule_and_stage_split(tmp_path):
    plan = finetune.FreezePlan.from_params({"unfreeze_epoch": 2, "freeze_bn": True})
    assert (plan.until_at(0), plan.until_at(1), plan.until_at(2), plan.until_at(None)) == (
        "head",
        "head",
        None,
        None,
    )
    params = tiny_params(
        tmp_path,
        "train",
        "--max_epochs",
        "4",
        "--unfreeze_epoch",
        "2",
        "--steps_per_epoch",
        "3",
        "--lr_warmup_epochs",
        "1",
    )
    run = build_run(params)
    assert [(s.first_epoch, s.end_epoch) for s in run.stages] == [(0, 2), (2, 4)]
    # The optimizer was built for every variable trained in some phase.
    assert len(run.model.trainable_variables) == len(tiny_model().trainable_variables)
    from utils.schedules import build_schedule, with_rewarm

    base = build_schedule("cosine", 0.1, 128, 3, 4, 1.0, 1.0, 0.9)
    schedule = with_rewarm(
        base, params["unfreeze_epoch"], params["lr_warmup_epochs"], steps_per_epoch=3
    )
    assert with_rewarm(base, None, params["lr_warmup_epochs"], 3) is base
    values = [float(schedule(s)) for s in range(10)]
    # Warm-up again from step 6 (epoch 2 x 3 steps) over 3 steps, then the base schedule.
    assert values[:6] == pytest.approx([float(base(s)) for s in range(6)])
    assert values[6] == 0.0 and values[7] == pytest.approx(float(base(7)) / 3)
    assert values[9] == pytest.approx(float(base(9)))


def test_pretrained_from_our_weights_file_reinitializes_classifier(tmp_path, caplog):
    source = tiny_model(num_classes=10)
    path = str(tmp_path / "model.weights.h5")
    source.save_weights(path)
    model = tiny_model(num_classes=3)
    fresh = model.get_layer("logits").get_weights()[0].copy()
    with caplog.at_level("INFO"):
        summary = finetune.load_pretrained(model, path, load_config(CFG, TINY_MPARAMS))
    assert summary["skipped"] == ["logits"] and summary["kind"] == "checkpoint"
    assert summary["weights"] == len(model.weights) - 2
    assert (
        "classifier re-initialized: pretrained weights have 10 classes, this run 3" in caplog.text
    )
    np.testing.assert_array_equal(model.get_layer("logits").get_weights()[0], fresh)
    for name in ("stem_conv", "stage6_block1", "head_bn"):
        for a, b in zip(
            model.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def test_pretrained_from_a_checkpoint_directory(tmp_path):
    from tests.helpers.tiny_run import save_random_checkpoint

    params = tiny_params(tmp_path / "src", "train")
    source = save_random_checkpoint(params)
    model = tiny_model(num_classes=10)
    summary = finetune.load_pretrained(model, str(tmp_path / "src"), params["model"])
    assert summary["skipped"] == [] and summary["weights"] == len(model.weights)
    np.testing.assert_array_equal(
        model.get_layer("logits").get_weights()[0], source.get_layer("logits").get_weights()[0]
    )


def test_pretrained_backbone_mismatch_fails(tmp_path):
    other = tiny_model(
        mparams=TINY_MPARAMS.replace("width_coefficient=0.1", "width_coefficient=0.2")
    )
    path = str(tmp_path / "model.weights.h5")
    other.save_weights(path)
    with pytest.raises(RunError, match="does not fit this model"):
        finetune.load_pretrained(tiny_model(), path, load_config(CFG, TINY_MPARAMS))
    with pytest.raises(ConfigError, match="no such file, run directory or checkpoint"):
        finetune.load_pretrained(tiny_model(), str(tmp_path / "nope"), {})


def test_pretrained_keras_applications_file_through_build_run(tmp_path):
    """A keras.applications weights file (random weights, no download) loads via --pretrained;
    the start is fresh: step 0, EMA shadows equal the imported weights."""
    ref = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "b0.weights.h5")
    ref.save_weights(path)
    params = main.flags.parse(
        [
            "--cfg",
            "config/efficientnet_v1/b0_cfg.py",
            "--mparams",
            "train_img_size=32,eval_img_size=32",
            "--dataset",
            "digits",
            "--mode",
            "train",
            "--model_dir",
            str(tmp_path / "run"),
            "--no-use_xla",
            "--pretrained",
            path,
            "--moving_average_decay",
            "0.9",
        ]
    )
    run = build_run(params)
    np.testing.assert_array_equal(
        run.model.get_layer("head_conv").get_weights()[0],
        ref.get_layer("top_conv").get_weights()[0],
    )
    assert int(run.optimizer.iterations.numpy()) == 0
    shadow = {s.name.split(":")[0]: s.numpy() for s in run.ema.shadows}
    np.testing.assert_array_equal(
        shadow["head_conv_kernel_ema"], ref.get_layer("top_conv").get_weights()[0]
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pretrained", "/nonexistent.h5"], "--pretrained /nonexistent.h5 does not exist"),
        (["--freeze_until", "stage9"], "--freeze_until 'stage9': use stem, stage1..stage6"),
        (["--freeze_until", "Stage 1"], "--freeze_until 'Stage 1': use stem"),
        (["--unfreeze_epoch", "3", "--max_epochs", "3"], r"--unfreeze_epoch must be in 1..2"),
        (["--unfreeze_epoch", "0"], r"--unfreeze_epoch must be in 1..299"),
    ],
)
def test_finetune_flag_errors(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        main.main(tiny_args(tmp_path / "run", "train", *extra))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_phase_run_trains_head_first_then_everything(tmp_path, caplog):
    """--unfreeze_epoch 1: after epoch 1 only the classifier moved; after epoch 2 the backbone
    did too (checkpoints of both epochs; the pretrained start is a fresh step count). The log
    calls the two halves phases, not image-size stages."""
    caplog.set_level("INFO", logger="runtime.train")
    from runtime.checkpoint import restore_for_inference

    source = tiny_model(num_classes=10)
    path = str(tmp_path / "model.weights.h5")
    source.save_weights(path)
    run = tmp_path / "run"
    assert (
        main.main(
            tiny_args(
                run,
                "train",
                "--pretrained",
                path,
                "--unfreeze_epoch",
                "1",
                "--max_epochs",
                "2",
                "--steps_per_epoch",
                "2",
                "--save_checkpoint_freq",
                "1",
                "--lr_warmup_epochs",
                "0",
                "--lr_init",
                "0.5",
            )
        )
        == 0
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "runtime.train"]
    assert any(line.startswith("phase 1/2 (classifier only), epochs 1-1: ") for line in lines)
    assert any(line.startswith("phase 2/2 (all layers), epochs 2-2: ") for line in lines)
    assert not [line for line in lines if line.startswith("stage ")], lines
    epochs = {}
    for epoch in (1, 2):
        model = tiny_model(num_classes=10)
        # 2 steps per epoch; checkpoints are numbered by the global step
        restore_for_inference(model, str(run), str(run / "checkpoints" / f"ckpt-{2 * epoch}"))
        epochs[epoch] = model
    stem = source.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(epochs[1].get_layer("stem_conv").get_weights()[0], stem)
    assert not np.array_equal(epochs[2].get_layer("stem_conv").get_weights()[0], stem)
    assert not np.array_equal(
        epochs[1].get_layer("logits").get_weights()[0], source.get_layer("logits").get_weights()[0]
    )
