"""Launch recipes: every shell script is valid bash, and every recipe's dry run prints a main.py
command whose flags parse with main.py's own parser (runtime.flags) and match the recipe."""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess

import pytest

from runtime.flags import build_parser
from tests.helpers import ROOT
from tests.helpers.launch_scripts import dry_run, main_py_args

SHELL_SCRIPTS = sorted(
    glob.glob(os.path.join(ROOT, "scripts", "**", "*.sh"), recursive=True)
    + glob.glob(os.path.join(ROOT, "efficientnet_v*", "**", "*.sh"), recursive=True)
    + glob.glob(os.path.join(ROOT, "*.sub"))
)
RECIPES = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, "efficientnet_v*", "**", "*.sh"), recursive=True)
    if os.path.basename(p) != "recipe.sh"
)
SUBMISSIONS = sorted(glob.glob(os.path.join(ROOT, "*.sub")))
LAUNCH = os.path.join(ROOT, "scripts", "launch.sh")


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def parse(args: list[str]):
    namespace, extras = build_parser().parse_known_args(args)
    assert extras == [], f"flags main.py does not know: {extras}"
    return namespace


def test_scripts_found():
    assert len(RECIPES) >= 3 * 15 and len(SUBMISSIONS) == 3
    assert {rel(p) for p in SUBMISSIONS} == {
        "run_S_multinode.sub",
        "run_B0_multinode.sub",
        "run_B4_multinode.sub",
    }


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=rel)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", RECIPES, ids=rel)
def test_recipe_dry_run_parses(script):
    result = dry_run([script])
    assert result.returncode == 0, result.stderr
    args = parse(main_py_args(result.stdout))
    assert os.path.isfile(os.path.join(ROOT, args.cfg))
    path = rel(script)
    precision = re.search(r"(AMP|TF32|FP32)", path).group(1)
    assert args.use_amp == (precision == "AMP")
    assert args.use_xla is True
    if precision == "FP32":
        assert args.use_tf32 is False
    gpus = re.search(r"_(\d+)x", path)
    assert args.num_gpus == (int(gpus.group(1)) if gpus else 1)
    assert (args.data_dir, args.model_dir) == ("/data", "/results")
    expected_mode = {
        "training": "train_and_eval",
        "evaluation": "eval",
        "inference": "inference_benchmark",
    }
    kind = path.split(os.sep)[2]
    mode = "training_benchmark" if "train_benchmark" in path else expected_mode[kind]
    assert args.mode == mode
    model = path.split(os.sep)[1]
    assert os.path.basename(args.cfg) == f"{model.lower()}_cfg.py"


def test_v2s_convergence_is_the_published_recipe():
    result = dry_run(["efficientnet_v2/S/training/AMP/convergence_8xA100-80G.sh"])
    args = parse(main_py_args(result.stdout))
    assert (args.n_stages, args.base_img_size, args.train_img_size, args.eval_img_size) == (
        4,
        128,
        300,
        384,
    )
    assert (args.max_epochs, args.lr_decay, args.lr_init) == (350, "cosine", 0.005)
    assert (args.moving_average_decay, args.augmenter_name) == (0.9999, "randaugment")
    assert (args.raug_magnitude, args.base_randaug_mag, args.train_batch_size) == (15, 5, 460)
    assert args.use_amp and args.use_xla


def test_extra_flags_come_last_and_override():
    result = dry_run(
        [
            "efficientnet_v1/B0/training/AMP/convergence_8xA100-80G.sh",
            "--max_epochs",
            "3",
            "--model_dir",
            "/tmp/run 1",
        ]
    )
    args = parse(main_py_args(result.stdout))
    assert (args.max_epochs, args.model_dir, args.train_batch_size) == (3, "/tmp/run 1", 1024)


def test_launcher_environment_and_dry_run_flag():
    env = {k: v for k, v in os.environ.items() if k != "DRY_RUN"}
    result = subprocess.run(
        ["bash", LAUNCH, "--dry_run", "TF32", "2", "config/efficientnet_v1/b4_cfg.py", "eval"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "DATA_DIR": "/d", "MODEL_DIR": "/m", "PYTHON": "py"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("py ")
    args = parse(main_py_args(result.stdout))
    assert (args.data_dir, args.model_dir, args.num_gpus, args.use_amp, args.use_tf32) == (
        "/d",
        "/m",
        2,
        False,
        True,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["AMP", "8", "config/efficientnet_v2/s_cfg.py"], "usage:"),
        (
            ["BF16", "8", "config/efficientnet_v2/s_cfg.py", "train"],
            "precision 'BF16' is not one of AMP, TF32, FP32",
        ),
        (
            ["AMP", "eight", "config/efficientnet_v2/s_cfg.py", "train"],
            "NUM_GPUS 'eight' is not a non-negative integer",
        ),
        (["AMP", "8", "config/nope.py", "train"], "config 'config/nope.py' not found"),
    ],
)
def test_launcher_errors(argv, message):
    result = dry_run([LAUNCH, *argv])
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("sub", SUBMISSIONS, ids=rel)
def test_multinode_submission_dry_run(sub):
    # As sbatch runs it: a spooled copy, SLURM_SUBMIT_DIR = where `sbatch` was called.
    result = dry_run(
        [sub],
        SLURM_SUBMIT_DIR=ROOT,
        SLURM_JOB_ID="1000",
        CONTAINER="img:1",
        DATA_DIR="/lustre/imagenet",
    )
    assert result.returncode == 0, result.stderr
    srun = shlex.split(result.stdout.splitlines()[0])
    assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert "--container-image=img:1" in srun
    assert "--container-mounts=/lustre/imagenet:/data," + os.path.join(ROOT, "results") in " ".join(
        srun
    )
    launch = srun.index("scripts/launch.sh")
    assert srun[launch + 1 : launch + 3] == ["AMP", "1"]  # one GPU per task
    args = parse(main_py_args(result.stdout))
    assert args.num_gpus == 1 and args.mode == "train_and_eval" and args.use_xla is True
    # The tasks inherit DATA_DIR from the submission; inside the container it is the mount.
    assert (args.data_dir, args.model_dir) == ("/data", "/results")


def test_multinode_without_container_runs_from_checkout():
    result = dry_run(
        ["run_S_multinode.sub"],
        SLURM_SUBMIT_DIR=ROOT,
        CONTAINER="",
        PRECISION="TF32",
        BATCH="230",
        RESULTS_DIR="/shared/r",
    )
    assert result.returncode == 0, result.stderr
    assert f"--chdir={ROOT}" in result.stdout and "MODEL_DIR=/shared/r" in result.stdout
    args = parse(main_py_args(result.stdout))
    assert (args.model_dir, args.train_batch_size, args.use_amp) == ("/shared/r", 230, False)


def test_docker_scripts():
    build = dry_run(["scripts/docker/build.sh", "effnet"])
    assert build.returncode == 0 and shlex.split(build.stdout) == [
        "docker",
        "build",
        "--tag",
        "effnet",
        ROOT,
    ]
    launch = dry_run(
        ["scripts/docker/launch.sh", "effnet"], DATA_DIR="/imagenet", RESULTS_DIR="/out"
    )
    words = shlex.split(launch.stdout)
    assert launch.returncode == 0 and words[:2] == ["docker", "run"]
    assert (
        "/imagenet:/data" in words and "/out:/results" in words and words[-2:] == ["effnet", "bash"]
    )
    for script in ("scripts/docker/build.sh", "scripts/docker/launch.sh"):
        result = dry_run([script])
        assert result.returncode == 2 and "usage:" in result.stderr


def test_dockerfile_uses_official_base_and_keeps_its_gpu_tensorflow():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    assert re.search(r"^FROM tensorflow/tensorflow:2\.21\.\d+-gpu$", text, re.M)
    # The image keeps its GPU TensorFlow: it installs everything but TensorFlow.
    installed = re.findall(r"pip install -r (\S+)", text)
    assert installed == ["requirements-base.txt"]
    with open(os.path.join(ROOT, "requirements-base.txt")) as f:
        requirements = f.read()
    assert not re.search(r"^tensorflow(-cpu)?\s*[<>=;\[]", requirements, re.M)
    assert "tensorflow-datasets" in requirements and "keras" in requirements
    for name in ("requirements.txt", "requirements-gpu.txt"):
        with open(os.path.join(ROOT, name)) as f:
            assert "-r requirements-base.txt" in f.read()


@pytest.mark.parametrize(
    "sub, name, batch",
    [
        ("run_S_multinode.sub", "efficientnet_v2-s", "460"),
        ("run_B0_multinode.sub", "efficientnet-b0", "1024"),
        ("run_B4_multinode.sub", "efficientnet-b4", "160"),
    ],
)
def test_submissions_are_thin_settings_over_one_job(sub, name, batch):
    with open(os.path.join(ROOT, sub)) as f:
        lines = f.read().splitlines()
    assert len(lines) <= 20 and lines[-1].endswith('/scripts/multinode.sh"')
    result = dry_run([sub], SLURM_SUBMIT_DIR=ROOT, CONTAINER="", BATCH="")
    assert result.returncode == 0, result.stderr
    assert f"MODEL_DIR={os.path.join(ROOT, 'results', name)}" in result.stdout
    assert parse(main_py_args(result.stdout)).train_batch_size == int(batch)


def test_multinode_job_needs_a_recipe():
    result = dry_run(["scripts/multinode.sh"], SLURM_SUBMIT_DIR=ROOT)
    assert result.returncode != 0 and "RECIPE: set by the .sub file" in result.stderr


def test_docker_launch_help_is_not_an_image_name():
    shown = dry_run(["scripts/docker/launch.sh", "--help"])
    assert (
        shown.returncode == 0
        and shown.stdout.startswith("usage:")
        and "docker run" not in shown.stdout
    )
    bad = dry_run(["scripts/docker/launch.sh", "--gpus"])
    assert bad.returncode == 2 and "NAME is an image name, not an option: --gpus" in bad.stderr


def test_launcher_on_cpu_runs_without_xla_and_appends_extra_args():
    result = dry_run(
        [LAUNCH, "FP32", "0", "config/efficientnet_v2/s_cfg.py", "train", "--max_epochs", "9"],
        EXTRA_ARGS="--max_epochs 2\n  --mparams blocks=('r1_k3_s1_e1_i24_o24_c1')",
    )
    assert result.returncode == 0, result.stderr
    words = main_py_args(result.stdout)
    assert words[-4:] == ["--max_epochs", "2", "--mparams", "blocks=('r1_k3_s1_e1_i24_o24_c1')"]
    args = parse(words)
    assert (args.num_gpus, args.use_xla, args.use_amp, args.max_epochs) == (0, False, False, 2)


def test_multinode_job_on_cpu_with_small_settings():
    result = dry_run(
        ["run_B0_multinode.sub"],
        SLURM_SUBMIT_DIR=ROOT,
        CONTAINER="",
        NUM_GPUS="0",
        PRECISION="FP32",
        BATCH="4",
        EXTRA_ARGS="--dataset digits --max_epochs 2 --augmenter_name none",
    )
    assert result.returncode == 0, result.stderr
    srun = shlex.split(result.stdout.splitlines()[0])
    launch = srun.index("scripts/launch.sh")
    assert srun[launch + 1 : launch + 3] == ["FP32", "0"]
    args = parse(main_py_args(result.stdout))
    assert (args.num_gpus, args.use_xla, args.train_batch_size) == (0, False, 4)
    # EXTRA_ARGS come last: they override the recipe's 500 epochs and AutoAugment.
    assert (args.dataset, args.max_epochs, args.augmenter_name) == ("digits", 2, "none")


@pytest.mark.parametrize("sub", SUBMISSIONS, ids=rel)
def test_submissions_are_requeueable_and_warned_before_the_time_limit(sub):
    with open(sub) as f:
        options = re.findall(r"^#SBATCH (\S+)", f.read(), re.M)
    assert "--requeue" in options and "--open-mode=append" in options
    # To the job steps (the training tasks), not B: the batch shell; SLURM checks the signal
    # times about once a minute, so less than 60 s may come too late.
    (signal,) = [o for o in options if o.startswith("--signal=")]
    seconds = int(re.fullmatch(r"--signal=USR1@(\d+)", signal).group(1))
    assert seconds >= 120


REQUEUE_LIB = os.path.join(ROOT, "scripts", "slurm_requeue.sh")


def end_job(status: int, **env: str) -> subprocess.CompletedProcess:
    script = f'. "{REQUEUE_LIB}"; end_job {status}; echo not reached'
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "REQUEUE"))}
    return subprocess.run(
        ["bash", "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=30
    )


def test_resumable_exit_status_is_sysexits_tempfail():
    result = subprocess.run(
        ["bash", "-c", f'. "{REQUEUE_LIB}"; echo "$EXIT_RESUMABLE"'],
        capture_output=True,
        text=True,
    )
    assert int(result.stdout) == os.EX_TEMPFAIL == 75


@pytest.mark.parametrize(
    "status, env",
    [
        (0, {"SLURM_JOB_ID": "7"}),
        (1, {"SLURM_JOB_ID": "7"}),
        (75, {}),  # not in a SLURM job: nothing to requeue
        (75, {"SLURM_JOB_ID": "7", "REQUEUE": "0"}),
    ],
)
def test_job_ends_with_the_training_status_unless_it_requeues(status, env):
    result = end_job(status, **env)
    assert result.returncode == status
    assert result.stdout == "" and "requeue" not in result.stderr
