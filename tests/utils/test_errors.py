"""utils/errors.py: every error the user can fix is a UserError; main.py maps each to its exit
status (2 before anything is written, the class's own once the run started) in one line."""

from __future__ import annotations

import ast
import builtins
import importlib
import os

import pytest

import main
import runtime
from runtime import components, distribute
from tests.helpers import ROOT
from utils.errors import BAD_INPUT, RESUMABLE, RUN_FAILED, UserError

PACKAGES = ("config", "model", "dataloader", "runtime", "utils", "scripts")
CFG = os.path.join(ROOT, "config", "efficientnet_v1", "b0_cfg.py")
TINY = "width_coefficient=0.1,depth_coefficient=0.1,train_img_size=32,eval_img_size=32"
# Exceptions that never reach the user as an error: build_tfrecords skips the file and lists it;
# the benchmark scripts leave out a timm row whose PyTorch peer cannot start, saying why.
INTERNAL = {("scripts.build_tfrecords", "BadImage"), ("scripts.torch_peer", "PeerError")}


def _base_names(node: ast.ClassDef) -> set[str]:
    return {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}


def defined_exceptions() -> list[tuple[str, str]]:
    """(module, class) of every exception class the project's packages define, found by reading
    the source: a class whose base is a builtin exception or another such class."""
    classes = []
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
                tree = ast.parse(open(path, encoding="utf-8").read())
                classes += [
                    (module, node.name, _base_names(node))
                    for node in ast.walk(tree)
                    if isinstance(node, ast.ClassDef)
                ]
    known = {
        n
        for n in dir(builtins)
        if isinstance(getattr(builtins, n), type)
        if issubclass(getattr(builtins, n), BaseException)
    }
    found: list[tuple[str, str]] = []
    while True:
        new = [(m, c) for m, c, bases in classes if bases & known and (m, c) not in found]
        if not new:
            return sorted(found)
        found += new
        known |= {c for _, c in new}


USER_ERRORS = [
    (module, name)
    for module, name in defined_exceptions()
    if (module, name) not in INTERNAL and name != "UserError"
]


def user_error(module: str, name: str) -> type[UserError]:
    return getattr(importlib.import_module(module.removesuffix(".__init__")), name)


def test_the_source_walk_finds_the_known_errors():
    names = {name for _, name in USER_ERRORS}
    assert {
        "ConfigError",
        "DataError",
        "FlagError",
        "RunError",
        "NonFiniteLossError",
        "ExportError",
        "PredictError",
        "ClusterError",
        "LockError",
        "WriteError",
        "CompatError",
        "RuntimeUnavailable",
        "ConvertError",
        "TrainingStopped",
    } <= names, names


@pytest.mark.parametrize("module, name", USER_ERRORS)
def test_every_error_of_the_project_is_a_user_error(module, name):
    cls = user_error(module, name)
    assert issubclass(cls, UserError), f"{module}.{name} does not derive from UserError"
    assert cls.exit_code in (BAD_INPUT, RUN_FAILED, RESUMABLE)


@pytest.mark.parametrize(
    "module, name, caught_as",
    [
        ("utils.errors", "ConfigError", ValueError),
        ("dataloader.config", "DataError", ValueError),
        ("runtime.flag_checks", "FlagError", ValueError),
        ("runtime.cluster", "ClusterError", ValueError),
        ("utils.fileio", "WriteError", OSError),
        ("runtime.errors", "RunError", RuntimeError),
        ("runtime.lock", "LockError", RuntimeError),
        ("runtime.compat", "CompatError", RuntimeError),
        ("runtime.runtimes", "RuntimeUnavailable", ImportError),
    ],
)
def test_user_errors_stay_what_their_callers_catch(module, name, caught_as):
    assert issubclass(user_error(module, name), caught_as)


def run_main(model_dir) -> int:
    return main.main(
        ["--cfg", CFG, "--mparams", TINY, "--dataset", "digits", "--model_dir", str(model_dir)]
    )


@pytest.mark.parametrize("module, name", USER_ERRORS)
def test_main_exits_with_the_errors_status_once_the_run_started(
    module, name, monkeypatch, capsys, tmp_path
):
    cls = user_error(module, name)

    def fail(mode, params):
        raise cls(f"{name} raised by the run")

    monkeypatch.setattr(runtime, "run", fail)
    assert run_main(tmp_path / "run") == cls.exit_code
    # "main.py: error: ..."; a run stopped by a signal is no error ("main.py: stopped by ...").
    assert capsys.readouterr().err == f"main.py: {cls.heading}{name} raised by the run\n"
    assert not (tmp_path / "run" / "train.lock").exists()  # the lock was released


@pytest.mark.parametrize("module, name", USER_ERRORS)
def test_main_exits_2_for_any_user_error_before_anything_is_written(
    module, name, monkeypatch, capsys, tmp_path
):
    cls = user_error(module, name)

    def reject(params, training, **overrides):
        raise cls(f"{name} found before the run")

    monkeypatch.setattr(components, "data_config", reject)
    assert run_main(tmp_path / "run") == BAD_INPUT
    assert capsys.readouterr().err == f"main.py: {cls.heading}{name} found before the run\n"
    assert not (tmp_path / "run").exists()


def test_a_dead_peer_worker_is_one_line_exit_1(monkeypatch, capsys, tmp_path):
    def fail(mode, params):
        raise ConnectionResetError("collective aborted")

    def describe(err):
        return f"a worker failed ({err})" if isinstance(err, ConnectionResetError) else None

    monkeypatch.setattr(runtime, "run", fail)
    monkeypatch.setattr(distribute, "describe_worker_failure", describe)
    assert run_main(tmp_path / "run") == RUN_FAILED
    assert capsys.readouterr().err == "main.py: error: a worker failed (collective aborted)\n"


def test_a_bug_is_not_turned_into_a_user_error(monkeypatch, tmp_path):
    def fail(mode, params):
        raise KeyError("a bug")

    monkeypatch.setattr(runtime, "run", fail)
    with pytest.raises(KeyError, match="a bug"):
        run_main(tmp_path / "run")
    assert not (tmp_path / "run" / "train.lock").exists()


def test_only_a_graceful_stop_exits_resumable_and_is_not_called_an_error():
    """Exit status 75 tells a SLURM job to requeue itself (scripts/slurm_requeue.sh): only the
    stop on a signal after a checkpoint may use it."""
    resumable = {n for m, n in USER_ERRORS if user_error(m, n).exit_code == RESUMABLE}
    assert resumable == {"TrainingStopped"}
    headings = {user_error(m, n).heading for m, n in USER_ERRORS if n not in resumable}
    assert headings == {"error: "}


def test_ctrl_c_outside_training_is_one_line_and_releases_the_lock(monkeypatch, capsys, tmp_path):
    """Before: SIGINT printed a traceback (training now stops gracefully: runtime.preemption)."""

    def interrupted(mode, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime, "run", interrupted)
    assert run_main(tmp_path / "run") == main.INTERRUPTED == 130
    assert capsys.readouterr().err == "main.py: interrupted\n"
    assert not (tmp_path / "run" / "train.lock").exists()
