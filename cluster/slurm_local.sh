#!/bin/bash
# A single-node SLURM on this machine (Debian's slurm-wlm and munge), for trying the README's cluster recipes.
#
#   sudo cluster/slurm_local.sh STATE_DIR [COMMAND ...]
#
# Installs slurm-wlm and munge with apt-get when they are missing, writes STATE_DIR/slurm.conf for this host
# (all its CPUs and memory, as `slurmd -C` reports them), starts munged, slurmctld and slurmd in the
# background and waits until `sinfo` shows the node idle. With a COMMAND it runs it with SLURM_CONF set and
# then stops; without one it prints `export SLURM_CONF=...` and waits until it is interrupted. On exit it
# stops the three daemons it started, by their process ids. Everything (keys, sockets, spool, logs, job
# records) stays in STATE_DIR; finished jobs are in STATE_DIR/jobcomp.txt (JobState, ExitCode, ...) and in
# `scontrol show job ID` for 24 hours.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 STATE_DIR [COMMAND ...]" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "$0: must run as root (it installs packages and starts slurmd)" >&2
    exit 2
fi
mkdir -p "$1"
state=$(cd "$1" && pwd)
shift

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

for port in 6817 6818; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$0: port $port is in use (another SLURM running?); stop it first" >&2
        exit 2
    fi
done

pids=()
stop() {
    # Cancel the jobs still queued or running (their slurmstepd outlive slurmd), then stop the daemons,
    # the last started first.
    if [ -n "${SLURM_CONF:-}" ] && squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null; then
        for _ in $(seq 30); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 1; done
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        while kill -0 "${pids[i]}" 2>/dev/null; do sleep 0.2; done
    done
}
trap stop EXIT
trap 'exit 130' INT TERM

# Each daemon runs in the foreground (-D / -F) as a child of this script, so $! is its process id.
chmod 700 "$state"
mkdir -p "$state/munge" "$state/ctld" "$state/spool"
[ -f "$state/munge/munge.key" ] || mungekey --create --keyfile "$state/munge/munge.key"
chmod 600 "$state/munge/munge.key"
munged -F --force --key-file "$state/munge/munge.key" --socket "$state/munge/munge.socket" \
    --pid-file "$state/munge/munged.pid" --log-file "$state/munge/munged.log" \
    --seed-file "$state/munge/munged.seed" 2>>"$state/munge/munged.log" &
pids+=($!)

host=$(hostname -s)
node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
cpus=$(sed 's/.* CPUs=\([0-9]*\).*/\1/' <<<"$node")
memory=$(sed 's/.* RealMemory=\([0-9]*\).*/\1/' <<<"$node")
cat > "$state/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((memory / cpus))
ReturnToService=2
MinJobAge=86400
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
JobCompType=jobcomp/filetxt
JobCompLoc=$state/jobcomp.txt
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$state/slurm.conf"

for _ in $(seq 50); do [ -S "$state/munge/munge.socket" ] && break; sleep 0.2; done
slurmctld -D -i -f "$SLURM_CONF" 2>>"$state/slurmctld.log" &
pids+=($!)
slurmd -D -f "$SLURM_CONF" 2>>"$state/slurmd.log" &
pids+=($!)

for _ in $(seq 60); do
    [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ] && break
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "$0: a daemon exited; see the logs in $state" >&2; exit 1; }
    done
    sleep 1
done
if [ "$(sinfo -h -N -o %t 2>/dev/null)" != idle ]; then
    echo "$0: the node is not idle after 60 s: $(sinfo -h -N -o '%t %E' 2>&1); see the logs in $state" >&2
    exit 1
fi
echo "slurm_local: node $host idle (munged, slurmctld, slurmd: pids ${pids[*]}); export SLURM_CONF=$SLURM_CONF" >&2

if [ $# -gt 0 ]; then
    "$@"
else
    sleep infinity &
    pids+=($!)
    wait $!
fi
