#!/usr/bin/env bash
# The SLURM multi-node job shared by run_{S,B0,B4}_multinode.sub (sourced by them after they set
# RECIPE, NAME and DEFAULT_BATCH; not run on its own).
#
# Every task runs main.py with one GPU; runtime/cluster.py reads srun's SLURM_* variables
# (SLURM_PROCID, SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE, SLURM_LOCALID), and
# runtime/distribute.py builds a MultiWorkerMirroredStrategy with NCCL all-reduce; task l of a
# node listens on MASTER_PORT + l.
# Global batch = BATCH x nodes x tasks per node. Resubmitting the same job resumes from the last
# checkpoint in RESULTS_DIR, which every node must see (a shared filesystem).
#
# Requeue (docs/distributed.md#time-limits-preemption-and-requeue): the .sub files ask SLURM for
# SIGUSR1 to the training tasks 5 minutes before the time limit (#SBATCH --signal=USR1@300) and
# are requeueable (--requeue, logs appended). A training step that exits with EXIT_RESUMABLE
# (75, scripts/slurm_requeue.sh) stopped on a signal after writing a checkpoint: the job then
# requeues itself, and the requeued job resumes from that checkpoint. Any other exit status ends
# the job with that status.
#
# Settings (environment variables at submission, e.g. `DATA_DIR=/lustre/imagenet sbatch ...`):
#   CONTAINER    image for pyxis/enroot built by scripts/docker/build.sh; empty = run on the
#                nodes' own Python from this checkout            [efficientnet-tf2:latest]
#   DATA_DIR     ImageNet TFRecords (train-*, validation-*), mounted at /data
#                                                                [/datasets/imagenet/tfrecords]
#   RESULTS_DIR  checkpoints and logs, mounted at /results       [$SLURM_SUBMIT_DIR/results/NAME]
#   PRECISION    AMP | TF32 | FP32                                [AMP]
#   BATCH        images per GPU (per task with NUM_GPUS=0)        [DEFAULT_BATCH of the .sub]
#   NUM_GPUS     GPUs per task; 0 = CPU tasks without XLA (small test runs)          [1]
#   EXTRA_ARGS   more main.py flags, last on the command line so they override the recipe
#                (split at whitespace; scripts/launch.sh), e.g. "--max_epochs 2 --dataset digits"
#   MASTER_PORT  first port of each node's tasks                  [12345 + job id mod 20000]
#   REQUEUE      0 = do not requeue on EXIT_RESUMABLE, end the job with it instead       [1]
#   DRY_RUN=1    print the srun command and the main.py command instead of running them
set -euo pipefail
: "${RECIPE:?set by the .sub file}" "${NAME:?set by the .sub file}" "${DEFAULT_BATCH:?set by the .sub file}"

# sbatch runs a spooled copy of the .sub file: the checkout is where the job was submitted from.
REPO_ROOT=${SLURM_SUBMIT_DIR:-$(pwd)}
. "$REPO_ROOT/$RECIPE"
CONTAINER=${CONTAINER-efficientnet-tf2:latest}
DATA_DIR=${DATA_DIR:-/datasets/imagenet/tfrecords}
RESULTS_DIR=${RESULTS_DIR:-$REPO_ROOT/results/$NAME}
PRECISION=${PRECISION:-AMP}
BATCH=${BATCH:-$DEFAULT_BATCH}
NUM_GPUS=${NUM_GPUS:-1}
export MASTER_PORT=${MASTER_PORT:-$((12345 + ${SLURM_JOB_ID:-0} % 20000))}
. "$REPO_ROOT/scripts/slurm_requeue.sh"

task=(scripts/launch.sh "$PRECISION" "$NUM_GPUS" "$CFG" train_and_eval "${TRAIN_ARGS[@]}"
  --train_batch_size "$BATCH")
if [[ -n "$CONTAINER" ]]; then
  # Inside the image the checkout is /workspace/efficientnet (Dockerfile).
  srun_args=(--container-image="$CONTAINER" --container-workdir=/workspace/efficientnet
    --container-mounts="$DATA_DIR:/data,$RESULTS_DIR:/results")
  # The tasks inherit the submission's environment: name the mount points, not the host paths.
  task_env=(env DATA_DIR=/data MODEL_DIR=/results)
else
  srun_args=(--chdir="$REPO_ROOT")
  task_env=(env DATA_DIR="$DATA_DIR" MODEL_DIR="$RESULTS_DIR")
fi
cmd=(srun --kill-on-bad-exit=1 "${srun_args[@]}" "${task_env[@]}" "${task[@]}")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  (cd "$REPO_ROOT" && DRY_RUN=1 "${task_env[@]}" "${task[@]}")
  exit 0
fi
mkdir -p "$RESULTS_DIR"
restarts=${SLURM_RESTART_COUNT:-0}
echo "job ${SLURM_JOB_ID:-?} run $((restarts + 1)) (SLURM_RESTART_COUNT=$restarts), results in $RESULTS_DIR"
status=0
"${cmd[@]}" || status=$?
end_job "$status"
