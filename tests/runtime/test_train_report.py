"""runtime/train_report.py: which weights a metric key names, the run's start lines and the block
that ends it."""

import math

from runtime import train_report

PARAMS = {
    "model_dir": "runs/my model",
    "log_filename": "log.json",
    "mode": "train_and_eval",
    "skip_eval": False,
    "lr_init": 0.01,
    "lr_warmup_epochs": 0.0,
    "lr_decay": "exponential",
    "lr_decay_epochs": 2.4,
    "lr_decay_rate": 0.97,
    "unfreeze_epoch": None,
}


def _epoch(epoch, **data):
    return {"type": "LOG", "step": [epoch], "data": data}


def test_keys_name_the_weights():
    assert train_report.with_prefix({"top1": 0.5}, train_report.val_prefix(ema=True)) == {
        "val_ema.top1": 0.5
    }
    assert train_report.with_prefix({"loss": 1.0}, train_report.val_prefix(ema=False)) == {
        "val.loss": 1.0
    }


def test_best_epoch_counts_the_last_record_of_an_epoch_and_skips_nan():
    records = [
        {"type": "LOG", "step": "PARAMETER", "data": {"val_ema.top1": 1.0}},
        _epoch(1, **{"val_ema.top1": 0.4}),
        _epoch(2, **{"val_ema.top1": 0.9}),  # this try of epoch 2 did not reach its checkpoint
        {"type": "LOG", "step": [2, 3], "data": {"val_ema.top1": 1.0}},
        _epoch(2, **{"val_ema.top1": 0.6}),  # the resumed run's epoch 2
        _epoch(3, **{"val_ema.top1": math.nan}),
        {"type": "LOG", "step": [], "data": {"val_ema.top1": 1.0}},
    ]
    assert train_report.best_top1(records, "val_ema") == (0.6, 2)
    assert train_report.best_top1(records, "val") is None


def test_end_of_run_block_names_raw_and_ema_final_best_weights_and_next_commands():
    records = [_epoch(1, **{"val_ema.top1": 0.5}), _epoch(2, **{"val_ema.top1": 0.875})]
    summary = {
        "epochs": 3,
        "global_step": 12,
        "val.top1": 0.75,
        "val_ema.top1": 0.8125,
        "exported_weights": "ema",
        "weights_path": "runs/my model/model.weights.h5",
        "saved_model_path": "runs/my model/saved_model",
    }
    block = train_report.end_of_run(summary, records, PARAMS)
    assert block.splitlines() == [
        "training done: 3 epochs, 12 steps, in runs/my model",
        "  validation top-1     final    best",
        "  raw weights         0.7500  0.7500 (epoch 3)",
        "  EMA weights         0.8125  0.8750 (epoch 2)",
        "  EMA weights written to runs/my model/model.weights.h5 and runs/my model/saved_model",
        "next:",
        "  python main.py --mode eval --model_dir 'runs/my model'",
        "  python main.py --mode predict --model_dir 'runs/my model' --predict_img_dir YOUR_IMAGES",
        "  python main.py --mode export --model_dir 'runs/my model'",
        "  python scripts/plot_log.py 'runs/my model/log.json'",
    ]


def test_end_of_run_without_evaluation_says_why_and_keeps_the_warnings():
    summary = {
        "epochs": 1,
        "global_step": 4,
        "exported_weights": "raw",
        "weights_path": "r/model.weights.h5",
        "warnings": ["validation top-1 0.1000 is at or below chance"],
    }
    lines = train_report.end_of_run(summary, [], {**PARAMS, "mode": "train"}).splitlines()
    assert lines[1:4] == [
        "  not evaluated (--mode train)",
        "  warning: validation top-1 0.1000 is at or below chance",
        "  raw weights written to r/model.weights.h5",
    ]


def test_the_announcement_says_which_learning_rate_and_why():
    derived = {
        "num_replicas": 1,
        "num_workers": 1,
        "global_batch_size": 16,
        "steps_per_epoch": 4,
        "total_steps": 24,
        "peak_lr": 0.00125,
        "final_lr": 0.00111,
    }
    run, lr = train_report.announcement(PARAMS, derived)
    assert run == "run: 1 replica(s) on 1 worker(s), global batch 16, 4 steps/epoch, 24 steps"
    assert lr == (
        "learning rate: peak 0.00125 = --lr_init 0.01 x global batch 16 / 128 (--lr_init is the "
        "rate for a batch of 128, the recipes' linear scaling); no warm-up; exponential decay "
        "x0.97 every 2.4 epochs; 0.00111 at the last step"
    )
    params = {**PARAMS, "lr_decay": "cosine", "lr_warmup_epochs": 1.0, "unfreeze_epoch": 2}
    _, lr = train_report.announcement(params, derived)
    assert "; linear warm-up over 1 epoch(s); cosine decay to 0; warm-up again from epoch 3" in lr
    _, lr = train_report.announcement({**PARAMS, "lr_warmup_epochs": 5.0, "max_epochs": 2}, derived)
    assert "warm-up over 5 epoch(s) (not shorter than the 2-epoch run: the peak is never" in lr
