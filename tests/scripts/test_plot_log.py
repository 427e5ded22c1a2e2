import io
import os
import subprocess
import sys

import pytest

from scripts.plot_log import collect_series, main
from tests.helpers import ROOT
from utils.dllogger import create_metrics_logger, read_log


def _training_log(path, global_steps):
    with create_metrics_logger(str(path), stream=io.StringIO()) as mlog:
        mlog.log_params({"lr_init": 0.1})
        for epoch in (1, 2, 3):  # 1-based, as runtime/train.py logs them
            for step in (1, 2, 3, 4):
                shown = (epoch - 1) * 4 + step if global_steps else step
                mlog.log(
                    [epoch, shown],
                    {
                        "train.loss": 3.0 - 0.2 * shown,
                        "lr": 0.1 / shown,
                        "train.total_ips": 100.0 + step,
                    },
                )
            mlog.log(
                [epoch],
                {
                    "val.top1": 0.3 * epoch,
                    "val.top5": 0.9,
                    "val.loss": 3.0 - epoch,
                    "train.loss": 1.0,
                    "val.images_per_sec_per_device": 50.0,
                },
            )
        mlog.log([], {"val.top1": 0.9})


@pytest.mark.parametrize("global_steps", [False, True])
def test_series_x_axis_follows_step_convention(tmp_path, global_steps):
    path = tmp_path / "log.json"
    _training_log(path, global_steps)
    series, xlabel = collect_series(read_log(str(path)))
    assert len(series["train.loss"]) == 12  # the epoch summary repeats step points: not drawn
    assert len(series["val.top1"]) == 3
    if global_steps:
        assert xlabel == "step"
        assert [x for x, _ in series["val.top1"]] == [4.0, 8.0, 12.0]
        assert series["train.loss"][-1][0] == 12.0
    else:
        assert xlabel == "epoch"
        assert [x for x, _ in series["val.top1"]] == [1.0, 2.0, 3.0]
        assert [x for x, _ in series["train.loss"][:4]] == [0.25, 0.5, 0.75, 1.0]
    # The final summary ([]) and PARAMETER lines are not curve points.
    assert "lr_init" not in series


def test_cli_writes_png(tmp_path):
    path = tmp_path / "log.json"
    _training_log(path, global_steps=False)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "plot_log.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "log.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000
    for name in ("train.loss", "val.top1", "val.top5", "lr", "train.total_ips"):
        assert name in proc.stdout
    assert "per_device" not in proc.stdout  # total / replicas would repeat the total curve


def test_output_flag(tmp_path):
    path = tmp_path / "log.json"
    _training_log(path, global_steps=True)
    assert main([str(path), "-o", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").stat().st_size > 10_000


def test_bad_inputs_exit_2_with_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing.json")])
    assert exc.value.code == 2
    assert "missing.json' does not exist" in capsys.readouterr().err
    params_only = tmp_path / "params.json"
    with create_metrics_logger(str(params_only), stream=io.StringIO()) as mlog:
        mlog.log_params({"lr_init": 0.1})
    with pytest.raises(SystemExit) as exc:
        main([str(params_only)])
    assert exc.value.code == 2
    assert "no loss, accuracy, lr or throughput values" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("DLLL {oops\nDLLL {}\n")
    with pytest.raises(SystemExit) as exc:
        main([str(corrupt)])
    assert exc.value.code == 2
    assert "corrupt.json:1: not a DLLogger JSON line" in capsys.readouterr().err


def _finetune_log(run_dir, flat_loss=1.0986):
    """A run of 6 epochs in 2 progressive-resizing stages, unfrozen after epoch 2, 3 classes."""
    run_dir.mkdir()
    (run_dir / "class_names.json").write_text('{"num_classes": 3, "class_names": null}')
    params = {
        "model": {"name": "efficientnet-b0"},
        "max_epochs": 6,
        "n_stages": 2,
        "base_img_size": 32,
        "train_img_size": 64,
        "base_randaug_mag": 5,
        "raug_magnitude": 10,
        "base_mixup": 0,
        "mixup_alpha": 0,
        "base_cutmix": 0,
        "cutmix_alpha": 0,
        "unfreeze_epoch": 2,
    }
    with create_metrics_logger(str(run_dir / "log.json"), stream=io.StringIO()) as mlog:
        mlog.log_params(params)
        for epoch in range(1, 7):
            mlog.log([epoch, 4], {"train.loss": flat_loss + 1e-5 * epoch, "train.top1": 0.3})
            mlog.log([epoch], {"val_ema.top1": 0.3, "val_ema.top5": 1.0, "val_ema.loss": 1.1})


def test_title_boundaries_and_few_classes(tmp_path, monkeypatch):
    """Before: the title was always 'log.json', no stage or unfreeze mark, and a top-5 curve
    stuck at 1 for 3 classes."""
    import scripts.plot_log as plot_log

    _finetune_log(tmp_path / "my_model")
    drawn = {}
    monkeypatch.setattr(
        plot_log, "plot", lambda series, xlabel, title, out, marks: drawn.update(locals()) or []
    )
    monkeypatch.chdir(tmp_path)
    assert main([os.path.join("my_model", "log.json")]) == 0
    assert drawn["title"] == "my_model: efficientnet-b0"
    assert drawn["marks"] == [(2.0, "all layers train"), (3.0, "stage 2")]
    assert "val_ema.top1" in drawn["series"] and "val_ema.top5" not in drawn["series"]


def test_a_flat_curve_is_drawn_without_an_axis_offset(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    import scripts.plot_log as plot_log

    _finetune_log(tmp_path / "run", flat_loss=1.0986)
    series, xlabel = collect_series(read_log(str(tmp_path / "run" / "log.json")))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_log.plot(series, xlabel, "run", str(tmp_path / "out.png"), [(2.0, "all layers train")])
    loss_axes = figures[0].axes[0]
    assert loss_axes.get_title() == "loss"
    assert loss_axes.yaxis.get_major_formatter().get_offset() == ""
    assert figures[0]._suptitle.get_text() == "run"
    plt.close(figures[0])
