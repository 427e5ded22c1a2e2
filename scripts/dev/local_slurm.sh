#!/usr/bin/env bash
# A one-node SLURM cluster (with munge) on this machine, for running the real-launcher tests
# (tests/scripts/test_real_launchers.py) and trying the .sub jobs. Development only: never on a
# machine that is part of a real SLURM cluster.
#
#   sudo scripts/dev/local_slurm.sh [start]   install (Debian packages), configure, start; idempotent
#   sudo scripts/dev/local_slurm.sh stop      stop slurmd, slurmctld and munged
#   scripts/dev/local_slurm.sh status         daemons, node state, launchers found
#
# start installs what is missing with apt-get (slurm-wlm, munge, openmpi-bin; Debian 12 ships
# slurm-wlm 22.05 and Open MPI 4.1), makes the munge key if there is none, writes
# /etc/slurm/slurm.conf for this host and starts munged, slurmctld and slurmd as daemons (no
# systemd needed, so it works in containers). The configuration works without cgroups
# (proctrack/linuxproc, task/none) and kills a cancelled job's processes 5 s after SIGTERM
# (KillWait=5), so cancellation tests are quick. It refuses to overwrite a slurm.conf it did
# not write.
#
# Environment:
#   SKIP_INSTALL=1  do not run apt-get (the packages must be installed)
#   CPUS            CPUs the node declares             [what slurmd detects, at least 2]
#   PARTITION       name of the one (default) partition [debug]
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# Written by scripts/dev/local_slurm.sh (development cluster on one node)."
PACKAGES=(slurm-wlm munge openmpi-bin)
STATE=/var/lib/slurm
LOGS=/var/log/slurm

fail() {
  echo "$0: error: $*" >&2
  exit 1
}
need_root() {
  [[ $(id -u) == 0 ]] || fail "run as root (sudo $0 $1): it installs packages and starts daemons"
}
alive() { # pid file -> its process still runs
  [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null ||
    missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  command -v mpirun >/dev/null || missing+=(openmpi-bin)
  [[ ${#missing[@]} == 0 ]] && return
  [[ "${SKIP_INSTALL:-0}" == 1 ]] && fail "SKIP_INSTALL=1 but ${missing[*]} not installed"
  echo "installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged && echo "started munged"
    for _ in $(seq 50); do
      munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
  munge -n | unmunge >/dev/null || fail "munged does not answer (see /var/log/munge/munged.log)"
}

# The node line: slurmd's own view of the hardware, at least 2 CPUs (2-task test jobs).
node_line() {
  local host=$1 detected cpus
  detected=$(slurmd -C | head -1)
  cpus=${CPUS:-$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$detected")}
  ((cpus >= 2)) || cpus=2
  # With fewer CPUs than detected hardware the socket/core layout is dropped (CPUs only).
  if [[ "$detected" == *" CPUs=$cpus "* ]]; then
    echo "${detected/NodeName=$host/NodeName=$host NodeAddr=127.0.0.1} State=UNKNOWN"
  else
    local memory
    memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
    echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN"
  fi
}

write_conf() {
  local host=$1 partition=${PARTITION:-debug} new
  new=$(
    cat <<EOF
$MARKER
ClusterName=localdev
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# No cgroups in containers: track a job's processes through /proc, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The node line may declare more CPUs than the hardware has (CPUS=4 on a 2-core machine).
SlurmdParameters=config_overrides
ReturnToService=2
# SIGTERM -> SIGKILL after 5 s (a real cluster uses 30-120 s); finished jobs stay listed 5 min.
KillWait=5
MinJobAge=300
$(node_line "$host")
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  )
  if [[ -e "$CONF" ]] && ! grep -qxF "$MARKER" "$CONF"; then
    fail "$CONF exists and was not written by this script; move it away to use a local cluster"
  fi
  if [[ -e "$CONF" && "$(cat "$CONF")" == "$new" ]]; then
    return 1 # unchanged
  fi
  echo "$new" >"$CONF"
  echo "wrote $CONF"
}

stop_daemons() {
  local name pid_file
  for name in slurmd slurmctld; do
    pid_file=/run/$name.pid
    if alive "$pid_file"; then
      kill "$(cat "$pid_file")"
      for _ in $(seq 100); do
        alive "$pid_file" || break
        sleep 0.1
      done
      echo "stopped $name"
    fi
  done
}

start_slurm() {
  local host changed=0
  host=$(hostname -s)
  getent hosts "$host" >/dev/null ||
    fail "host name '$host' does not resolve; add '127.0.0.1 $host' to /etc/hosts"
  write_conf "$host" && changed=1
  install -d -o slurm -g slurm "$STATE/slurmctld" "$LOGS"
  install -d "$STATE/slurmd"
  if ((changed)); then
    stop_daemons
  fi
  alive /run/slurmctld.pid || { slurmctld && echo "started slurmctld"; }
  alive /run/slurmd.pid || { slurmd && echo "started slurmd"; }
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo --noheader --nodes="$host" --format=%t 2>/dev/null || true)
    case "$state" in
      idle* | mix* | alloc*) break ;;
      drain* | down*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  case "$state" in
    idle* | mix* | alloc*) ;;
    *) fail "node $host is '${state:-not answering}' (see $LOGS/slurmctld.log, $LOGS/slurmd.log)" ;;
  esac
}

status() {
  local name
  for name in munged slurmctld slurmd; do
    case $name in
      munged) munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && echo "munged: running" ||
        echo "munged: not running" ;;
      *) alive "/run/$name.pid" && echo "$name: running (pid $(cat "/run/$name.pid"))" ||
        echo "$name: not running" ;;
    esac
  done
  command -v sinfo >/dev/null && sinfo 2>/dev/null || true
  for name in sbatch srun scancel mpirun; do
    printf '%s: %s\n' "$name" "$(command -v "$name" || echo 'not found')"
  done
}

case "${1:-start}" in
  start)
    need_root start
    install_packages
    start_munge
    start_slurm
    status
    ;;
  stop)
    need_root stop
    stop_daemons
    if [[ -s /run/munge/munged.pid ]] && alive /run/munge/munged.pid; then
      kill "$(cat /run/munge/munged.pid)" && echo "stopped munged"
    fi
    ;;
  status) status ;;
  *)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
