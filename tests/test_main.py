"""Command line: parsing, every error path (one line, exit 2, nothing written), params.json."""

import ast
import glob
import json
import os
import re
import subprocess
import sys

import pytest

import main
from runtime import MODES, flags, run_params
from tests.helpers import ROOT
from tests.helpers.cli import assert_one_line
from tests.helpers.config_cases import BAD_MPARAMS
from tests.helpers.processes import program
from tests.helpers.tiny_run import tiny_args

CFG = os.path.join(ROOT, "config", "efficientnet_v1", "b0_cfg.py")
TINY = "width_coefficient=0.1,depth_coefficient=0.1,train_img_size=32,eval_img_size=32"


def parse(*argv):
    return flags.parse(["--cfg", CFG, "--data_dir", ROOT, *argv])


def test_defaults_and_resolved_image_sizes():
    params = parse()
    assert params["mode"] == "train_and_eval" and params["dataset"] == "imagenet"
    assert (params["optimizer"], params["lr_init"], params["lr_decay"]) == (
        "rmsprop",
        0.008,
        "exponential",
    )
    assert (params["max_epochs"], params["train_batch_size"], params["eval_batch_size"]) == (
        300,
        32,
        100,
    )
    assert params["resume_checkpoint"] is True and params["use_xla"] is None
    assert params["model"]["name"] == "efficientnet-b0"
    assert (params["train_img_size"], params["eval_img_size"]) == (224, 224)
    assert parse("--mparams", TINY)["train_img_size"] == 32
    assert parse("--train_img_size", "64")["train_img_size"] == 64


def test_every_boolean_switches_both_ways():
    parser = flags.build_parser()
    booleans = [
        a.dest
        for a in parser.actions()
        if len(a.option_strings) == 2 and a.option_strings[1].startswith("--no-")
    ]
    assert {
        "use_xla",
        "use_amp",
        "use_tf32",
        "resume_checkpoint",
        "skip_eval",
        "nesterov",
        "defer_img_mixing",
        "enable_tensorboard",
        "export_SavedModel",
        "cache",
        "fp16_compression",
    } <= set(booleans)
    for name in booleans:
        assert parse(f"--{name}")[name] is True
        assert parse(f"--no-{name}")[name] is False


def test_typed_values_and_modes():
    params = parse(
        "--max_epochs",
        "3",
        "--lr_init",
        "0.5",
        "--seed",
        "7",
        "--dataset",
        "tfds:mnist",
        "--mode",
        "eval",
        "--optimizer",
        "lamb",
        "--lr_decay",
        "cosine",
    )
    assert (params["max_epochs"], params["lr_init"], params["seed"]) == (3, 0.5, 7)
    assert (params["dataset"], params["mode"], params["optimizer"]) == (
        "tfds:mnist",
        "eval",
        "lamb",
    )
    assert parse("--benchmark_batch_sizes", "8,16")["benchmark_batch_sizes"] == (8, 16)
    assert set(flags.MODE_NAMES) == set(MODES)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--max_epoch", "3"],
            r"unrecognized argument\(s\): --max_epoch 3 \(did you mean --max_epochs\?\); valid flags: .*--amp_dtype .*--weight_decay",
        ),
        (["--lr", "0.1"], r"unrecognized argument\(s\): --lr 0.1.*valid flags:"),
        (["stray"], r"unrecognized argument\(s\): stray"),
        (["--max_epochs", "three"], r"argument --max_epochs: invalid int value: 'three'"),
        (["--lr_init", "fast"], r"argument --lr_init: invalid float value"),
        (["--mode", "fit"], r"argument --mode: invalid choice: 'fit'"),
        (["--optimizer", "adagrad"], r"argument --optimizer: invalid choice"),
        (
            ["--dataset", "cifar"],
            r"invalid dataset 'cifar' \(choose from imagenet, folder, digits, synthetic or tfds:NAME\)",
        ),
        (["--use_amp", "yes"], r"unrecognized argument\(s\): yes"),
        (
            ["--mparams", "widht_coefficient=2"],
            r"unknown --mparams key 'widht_coefficient' \(did you mean 'width_coefficient'\?\); valid keys: .*depth_coefficient",
        ),
        (["--mparams", "width_coefficient"], r"not of the form key=value"),
        (["--n_stages", "5", "--max_epochs", "4"], r"--n_stages=5 exceeds --max_epochs=4"),
        (["--max_epochs", "0"], r"--max_epochs must be >= 1, got 0"),
        (["--grad_accum_steps", "0"], r"--grad_accum_steps must be >= 1"),
        (["--lr_init", "0"], r"--lr_init must be > 0"),
        (["--moving_average_decay", "1.0"], r"--moving_average_decay must be in \[0, 1\)"),
        (["--grad_clip_norm", "-1"], r"--grad_clip_norm must be >= 0"),
        (["--num_gpus", "-1"], r"--num_gpus must be >= 0"),
        (["--all_reduce", "mpi"], r"argument --all_reduce: invalid choice: 'mpi'"),
        (
            ["--benchmark_batch_sizes", "8,x"],
            r"invalid batch size list '8,x' \(comma-separated integers >= 1",
        ),
        (["--benchmark_batch_sizes", "0"], r"invalid batch size list '0'"),
        (["--benchmark_steps", "0"], r"--benchmark_steps must be >= 1"),
        (["--crop_fraction", "1.5"], r"--crop_fraction must be in \(0, 1\]"),
        (["--dataset", "imagenet"], r"--dataset imagenet needs --data_dir"),
        (
            ["--dataset", "folder", "--data_dir", "/no/such/dir"],
            r"--data_dir /no/such/dir is not a directory",
        ),
        (["--mode", "predict", "--dataset", "digits"], r"--mode predict needs --predict_img_dir"),
        (
            ["--mode", "predict", "--dataset", "digits", "--predict_img_dir", "/no/such"],
            r"--predict_img_dir /no/such does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(main_exit, tmp_path, argv, message):
    model_dir = tmp_path / "run"
    code, err = main_exit(["--cfg", CFG, "--model_dir", str(model_dir), *argv])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("main.py: error: ")
    assert re.search(message, err), err
    assert not model_dir.exists()


def test_process_exit_status_and_single_stderr_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "main.py", "--cfg", CFG, "--model_dir", str(tmp_path / "r"), "--use-xla"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "main.py: error: unrecognized argument(s): --use-xla "
        "(did you mean --use_xla?); valid flags: "
    )
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "r").exists()


def test_missing_and_broken_config_files(main_exit, tmp_path):
    code, err = main_exit(["--cfg", str(tmp_path / "nope_cfg.py")])
    assert (code, err.strip()) == (
        2,
        f"main.py: error: config file not found: {tmp_path / 'nope_cfg.py'}",
    )
    code, err = main_exit([])
    assert code == 2 and "the following arguments are required: --cfg" in err


def test_data_config_error_fails_before_writing(capsys, tmp_path, monkeypatch):
    """A setting the dataloader's DataConfig rejects stops main with exit 2 before writing."""
    from dataloader.config import DataError
    from runtime import components

    def reject(params, training, **overrides):
        raise DataError("augmenter settings rejected")

    monkeypatch.setattr(components, "data_config", reject)
    model_dir = tmp_path / "run"
    code = main.main(
        ["--cfg", CFG, "--mparams", TINY, "--dataset", "digits", "--model_dir", str(model_dir)]
    )
    assert code == 2
    assert capsys.readouterr().err == "main.py: error: augmenter settings rejected\n"
    assert not model_dir.exists()


def test_unwritable_model_dir_is_exit_2(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main.main(
        [
            "--cfg",
            CFG,
            "--mparams",
            TINY,
            "--dataset",
            "digits",
            "--model_dir",
            str(blocker / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(
        f"main.py: error: cannot write to --model_dir {blocker / 'run'}"
    )


def test_params_json_holds_every_flag_and_the_model(tmp_path):
    from runtime.components import write_json

    params = parse("--mparams", TINY, "--model_dir", str(tmp_path))
    path = write_json(str(tmp_path / run_params.PARAMS_FILE), params)
    saved = json.load(open(path))
    parser = flags.build_parser()
    assert {a.dest for a in parser.actions() if a.dest != "help"} <= set(saved)
    assert saved["model"]["width_coefficient"] == 0.1 and saved["cfg"] == CFG
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    assert (
        run_params.params_filename("train")
        == run_params.params_filename("train_and_eval")
        == "params.json"
    )
    assert run_params.params_filename("eval") == "params_eval.json"


def test_every_mode_resolves_to_a_function():
    from runtime import mode_function

    for mode in MODES:
        assert callable(mode_function(mode)), mode
    with pytest.raises(ValueError, match="unknown mode 'fit'; valid: train, train_and_eval"):
        mode_function("fit")


def test_flags_load_without_tensorflow():
    """A typo on the command line fails at once: the flag module loads neither TF nor Keras."""
    assert (
        subprocess.run(program("imports_without_tensorflow", "runtime.flags"), cwd=ROOT).returncode
        == 0
    )


def test_the_parser_records_every_flag_its_help_shows():
    """flag_names, params.json's keys and docs/flags.md read the parser's own record of the flags
    it added; nothing that --help shows may be missing from it."""
    parser = flags.build_parser()
    shown = set(re.findall(r"--[A-Za-z_][\w-]*", parser.format_help()))
    assert shown == set(flags.flag_names(parser))
    assert {"--help", "--use_amp", "--no-use_amp", "--lr_init"} <= shown
    assert [a.dest for a in parser.groups["run"]][:3] == ["cfg", "mparams", "mode"]


def _imports(path: str) -> set[str]:
    """The modules `path` imports (module level or inside functions), `from a import b` as a.b."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_runtime_reads_resolved_params_never_the_command_line_module():
    """Only main.py (and scripts, tests) import runtime.flags: the runtime's config objects come
    from the resolved params (`from_params`), their defaults from TF-free modules."""
    importers = [
        os.path.relpath(path, ROOT)
        for path in glob.glob(os.path.join(ROOT, "runtime", "*.py"))
        if not path.endswith(os.sep + "flags.py") and "runtime.flags" in _imports(path)
    ]
    assert importers == []
    assert "runtime.flags" in _imports(os.path.join(ROOT, "main.py"))  # the check sees imports


def _folder_run(tmp_path, *extra):
    """main.py arguments of a tiny training run on the folder data set tmp_path/data."""
    return [
        "--cfg",
        CFG,
        "--mparams",
        TINY,
        "--dataset",
        "folder",
        "--data_dir",
        str(tmp_path / "data"),
        "--mode",
        "train",
        "--model_dir",
        str(tmp_path / "run"),
        *extra,
    ]


@pytest.mark.parametrize(
    "folders, message",
    [
        ([], "no train folder: expected {data}/train, with one sub-folder per class"),
        (["val/cat"], "no train folder: expected {data}/train"),
        (["train", "val/cat"], "no class folders in {data}/train: put each class's images in"),
        (["train/cat"], "no validation folder: expected {data}/val or {data}/validation"),
    ],
)
def test_a_folder_data_set_without_its_layout_is_exit_2_and_writes_nothing(
    main_exit, tmp_path, folders, message
):
    """Before: exit 1 once TensorFlow had started, with params.json left in model_dir."""
    data = tmp_path / "data"
    data.mkdir()
    for folder in folders:
        (data / folder).mkdir(parents=True)
    code, err = main_exit(_folder_run(tmp_path))
    assert_one_line(err, code, 2)
    assert f"--data_dir {data}: " + message.format(data=data) in err
    assert not (tmp_path / "run").exists()


def test_the_folder_layout_is_checked_without_tensorflow(tmp_path):
    (tmp_path / "data").mkdir()
    done = subprocess.run(
        program("parse_without_tensorflow", *_folder_run(tmp_path)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr  # 3: TensorFlow was loaded
    assert "no train folder" in done.stderr


def test_runtime_data_error_is_one_line_exit_1(capsys, tmp_path):
    """A data problem found when training starts (an empty class folder): exit 1."""
    for folder in ("train/cat", "train/dog", "val/cat"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    (tmp_path / "data" / "train" / "cat" / "0.jpg").write_bytes(b"not read")
    code = main.main(_folder_run(tmp_path))
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("main.py: error: ") and err.count("\n") == 1, err
    assert f"class folder {tmp_path / 'data' / 'train' / 'dog'} holds no usable file" in err


# ---------------------------------------------------------------------------------------------
# --mparams and flag values: exit 2, one line, no traceback, nothing written (issue #12)


@pytest.mark.parametrize("mparams, message", BAD_MPARAMS)
def test_bad_mparams_value_exits_2_and_writes_nothing(run_main, tmp_path, mparams, message):
    """Before: width_coefficient=abc/-1, dropout_rate=5 exited 1 after writing params.json;
    train_img_size=abc raised a traceback."""
    model_dir = tmp_path / "run"
    code, err = run_main(
        [
            "--cfg",
            "config/efficientnet_v2/s_cfg.py",
            "--mparams",
            mparams,
            "--dataset",
            "digits",
            "--model_dir",
            str(model_dir),
        ],
    )
    assert_one_line(err, code, 2)
    assert re.search(message, err), err
    assert not model_dir.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr_init", "nan"], r"--lr_init must be a finite number, got nan"),
        (["--label_smoothing", "inf"], r"--label_smoothing must be a finite number"),
        (
            ["--log_filename", "../../x.json"],
            r"--log_filename must be a file name inside --model_dir",
        ),
        (["--log_filename", "/tmp/x.json"], r"--log_filename must be a file name"),
        (["--log_filename", ".."], r"--log_filename must be a file name"),
        (["--max_image_pixels", "0"], r"--max_image_pixels must be >= 1"),
        (["--raug_num_layers", "-1"], r"--raug_num_layers must be >= 0"),
        (["--save_checkpoint_steps", "0"], r"--save_checkpoint_steps must be >= 1, got 0"),
        (["--save_checkpoint_minutes", "-1"], r"--save_checkpoint_minutes must be >= 0"),
        (["--save_checkpoint_minutes", "inf"], r"--save_checkpoint_minutes must be a finite"),
        (["--keep_checkpoints", "0"], r"--keep_checkpoints must be >= 1, got 0"),
    ],
)
def test_bad_flag_values_exit_2_and_write_nothing(run_main, tmp_path, argv, message):
    """Before: NaN passed every range check and --log_filename ../../x.json wrote outside."""
    model_dir = tmp_path / "run"
    code, err = run_main(tiny_args(model_dir, "train", *argv))
    assert_one_line(err, code, 2)
    assert re.search(message, err), err
    assert not model_dir.exists()


def test_help_says_cfg_executes_python(capsys):
    with pytest.raises(SystemExit):
        flags.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "executed as Python code" in text
    assert "--follow_symlinks" in text and "--max_image_pixels" in text
