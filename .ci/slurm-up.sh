#!/usr/bin/env bash
# Start a one-node SLURM cluster on localhost for the `slurm`-marked tests: Debian's slurm-wlm + munge, run as root
# without systemd, config/state/spool/logs under $SELFSUP_SLURM_DIR (default /tmp/selfsup-slurm). Prints the line
# `export SLURM_CONF=...` that clients need (tests read it from $SELFSUP_SLURM_DIR/env too). Waits at most
# $SELFSUP_SLURM_WAIT_S (60) seconds for the node to be idle. Never fatal to CI: on failure it says why and exits 1,
# and the slurm tests then skip. Stop it with .ci/slurm-down.sh.
set -uo pipefail
dir="${SELFSUP_SLURM_DIR:-/tmp/selfsup-slurm}"
wait_s="${SELFSUP_SLURM_WAIT_S:-60}"
say() { echo "slurm-up: $*" >&2; }

if [ "$(id -u)" != 0 ]; then say "needs root (starts munged/slurmctld/slurmd)"; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  say "installing slurm-wlm and munge with apt"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q slurmctld slurmd slurm-client munge; } >"${TMPDIR:-/tmp}/slurm-apt.log" 2>&1 \
    || { say "apt-get failed (see ${TMPDIR:-/tmp}/slurm-apt.log)"; exit 1; }
fi

"$(dirname "$0")/slurm-down.sh" >/dev/null 2>&1 || true  # a previous cluster of ours
mkdir -p "$dir"/{state,spool,log,run,munge}
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 8 / 10 ))

# munge: its own socket and key under $dir (a system munged, if any, is left alone)
[ -f "$dir/munge/munge.key" ] || { dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null; }
chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
  || { say "munged did not start (see $dir/log/munged.log)"; exit 1; }

cat >"$dir/slurm.conf" <<EOF
ClusterName=selfsup
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
ReturnToService=2
JobRequeue=1
KillWait=20
MinJobAge=300
SlurmctldPort=${SELFSUP_SLURMCTLD_PORT:-6817}
SlurmdPort=${SELFSUP_SLURMD_PORT:-6818}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"
echo "export SLURM_CONF=$SLURM_CONF" >"$dir/env"

slurmctld -c -f "$SLURM_CONF" || { say "slurmctld did not start (see $dir/log/slurmctld.log)"; exit 1; }
slurmd -f "$SLURM_CONF" || { say "slurmd did not start (see $dir/log/slurmd.log)"; exit 1; }

for _ in $(seq "$wait_s"); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -n1)
  if [ "$state" = idle ]; then
    say "node $host idle after ${SECONDS}s ($cpus CPUs, ${mem} MB); SLURM_CONF=$SLURM_CONF"
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
say "node not idle after ${wait_s}s (state '${state:-none}'); logs in $dir/log"
exit 1
