#!/usr/bin/env bash
# Stop the cluster .ci/slurm-up.sh started (by the pids it recorded) and remove its state; safe to run twice.
set -uo pipefail
dir="${SELFSUP_SLURM_DIR:-/tmp/selfsup-slurm}"
for pidfile in "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid" "$dir/munge/munged.pid"; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$pidfile"
done
rm -rf "$dir/state" "$dir/spool" "$dir/env" "$dir/slurm.conf"
echo "slurm-down: stopped" >&2
