# How a SLURM batch job ends after its training step (sourced by scripts/multinode.sh).
#
# main.py exits with EXIT_RESUMABLE when a signal stopped it after it wrote a checkpoint:
# SIGTERM, SIGINT, or the SIGUSR1 that `#SBATCH --signal=USR1@300` sends to the training tasks
# 5 minutes before the time limit. Running the same command again resumes from that checkpoint.
# 75 is EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry").
EXIT_RESUMABLE=75

# end_job STATUS: the batch script's last command. With STATUS = EXIT_RESUMABLE inside a SLURM
# job, and REQUEUE not 0, it requeues the job (`scontrol requeue`: SLURM ends this script and
# runs the job again under the same id, eligible about 2 minutes later; the job must be
# requeueable, `#SBATCH --requeue`). Otherwise the script exits with STATUS.
end_job() {
  local status=$1
  if [[ $status == "$EXIT_RESUMABLE" && "${REQUEUE:-1}" != 0 && -n "${SLURM_JOB_ID:-}" ]]; then
    echo "training stopped with a checkpoint (exit $status): requeueing job $SLURM_JOB_ID"
    if scontrol requeue "$SLURM_JOB_ID"; then
      exit 0
    fi
    echo "scontrol requeue $SLURM_JOB_ID failed; submit the job again to resume" >&2
  fi
  exit "$status"
}
