#!/usr/bin/env bash
# A local single-node SLURM cluster for nsrun's tests and demos (Debian/Ubuntu, as root).
#
#   launch/slurm-local.sh up       install slurmctld/slurmd/slurm-client/munge when missing (apt-get), write
#                                  slurm.conf into the state dir, start munged, slurmctld and slurmd, and wait
#                                  until sinfo shows the node idle (idempotent: a running cluster is kept)
#   launch/slurm-local.sh down     cancel every job, stop the daemons this script started (by their pid files)
#   launch/slurm-local.sh status   exit 0 when the cluster answers, print sinfo
#   launch/slurm-local.sh env      print `export SLURM_CONF=...` (eval "$(launch/slurm-local.sh env)")
#
# Environment: NSRUN_SLURM_DIR (state dir, default /tmp/nsrun-slurm), NSRUN_SLURM_PORT (slurmctld port,
# default 6817; slurmd uses the next one), NSRUN_SLURM_WAIT (seconds to wait for the node, default 90).
# Clients find the config through SLURM_CONF; when /etc/slurm/slurm.conf does not exist, `up` also links it
# there (and `down` removes the link), so that sbatch/squeue/nsrun work without exporting anything.
# No accounting database (slurmdbd) runs: sacct fails here, and nsrun's launcher tracks jobs with squeue.
set -euo pipefail

STATE="${NSRUN_SLURM_DIR:-/tmp/nsrun-slurm}"
PORT="${NSRUN_SLURM_PORT:-6817}"
WAIT="${NSRUN_SLURM_WAIT:-90}"
CONF="$STATE/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
export SLURM_CONF="$CONF"

say() { echo "slurm-local: $*" >&2; }
die() { say "error: $*"; exit 1; }

alive() {  # alive PIDFILE: the process named in PIDFILE runs
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; run as root (apt-get install) or install them"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    local args=(-y -q --no-install-recommends -o Dpkg::Use-Pty=0 install "${missing[@]}")
    apt-get "${args[@]}" >"$STATE/apt.log" 2>&1 || {
        apt-get -q update >>"$STATE/apt.log" 2>&1 && apt-get "${args[@]}" >>"$STATE/apt.log" 2>&1
    } || die "apt-get install ${missing[*]} failed; see $STATE/apt.log"
}

munge_works() {
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

start_munge() {
    if munge_works; then
        return 0  # a munged (ours or the system's) already answers
    fi
    [[ -s /etc/munge/munge.key ]] || {
        say "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --force; else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; fi
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    }
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    echo /run/munge/munged.pid >"$STATE/munged.pidfile"  # remember that this script started it
    for _ in $(seq 50); do munge_works && return 0; sleep 0.1; done
    die "munged did not come up; see /var/log/munge/munged.log"
}

write_conf() {
    local host node
    host=$(hostname -s)
    # the node as slurmd sees it (real CPU count, sockets, cores, memory), named by the short host name
    node=$(slurmd -C 2>/dev/null | head -1 | sed -E "s/^NodeName=[^ ]+/NodeName=$host/") || true
    [[ "$node" == NodeName=* ]] || node="NodeName=$host CPUs=$(nproc)"
    node="$node NodeAddr=127.0.0.1"  # one node: no DNS needed for the host name
    mkdir -p "$STATE/state" "$STATE/spool" "$STATE/log"
    cat >"$CONF" <<EOF
# written by launch/slurm-local.sh: a single-node cluster for nsrun tests and demos
ClusterName=nsrun-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# finished jobs stay visible to squeue/scontrol for 10 minutes (nsrun tracks jobs with squeue: no slurmdbd)
MinJobAge=600
KillWait=30
SlurmctldTimeout=60
SlurmdTimeout=120
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$node State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

link_etc_conf() {
    if [[ ! -e "$ETC_CONF" && ! -L "$ETC_CONF" ]] && mkdir -p /etc/slurm 2>/dev/null; then
        ln -s "$CONF" "$ETC_CONF" && echo "$ETC_CONF" >"$STATE/linked-etc-conf"
    fi
}

cluster_answers() {
    alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" && sinfo -h >/dev/null 2>&1
}

node_state() {
    sinfo -h -N -o "%T" 2>/dev/null | head -1
}

cmd_up() {
    mkdir -p "$STATE"
    if cluster_answers; then
        say "already up ($CONF)"
        link_etc_conf
        sinfo
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || die "must run as root (the local cluster runs its daemons as root)"
    install_packages
    # leftovers of a cluster that was not stopped cleanly
    for d in slurmd slurmctld; do
        alive "$STATE/$d.pid" && kill "$(cat "$STATE/$d.pid")" 2>/dev/null || true
    done
    write_conf
    start_munge
    slurmctld -i -f "$CONF"  # -i: ignore stale job state in StateSaveLocation
    slurmd -f "$CONF"
    link_etc_conf
    local t0=$SECONDS state=""
    while (( SECONDS - t0 < WAIT )); do
        state=$(node_state)
        [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]] && break
        [[ "$state" == down* || "$state" == drain* ]] && scontrol update NodeName="$(hostname -s)" State=RESUME \
            >/dev/null 2>&1 || true
        sleep 0.5
    done
    [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]] || {
        tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
        die "node not idle after ${WAIT}s (state: ${state:-none}); logs in $STATE/log"
    }
    say "up in $((SECONDS - t0))s: $CONF"
    sinfo
    echo "export SLURM_CONF=$CONF"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
    local pidfile=$2 pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    say "$1 (pid $pid) did not stop; killing it"
    kill -9 "$pid" 2>/dev/null || true
}

cmd_down() {
    if [[ ! -f "$CONF" ]]; then
        say "no cluster in $STATE"
        return 0
    fi
    if cluster_answers; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [[ -n "${jobs// /}" ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 100); do [[ -z "$(squeue -h -t R,CG 2>/dev/null)" ]] && break; sleep 0.2; done
        fi
    fi
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
    if [[ -s "$STATE/munged.pidfile" ]]; then
        stop_pidfile munged "$(cat "$STATE/munged.pidfile")"
        rm -f "$STATE/munged.pidfile"
    fi
    if [[ -s "$STATE/linked-etc-conf" ]]; then
        [[ -L "$ETC_CONF" && "$(readlink "$ETC_CONF")" == "$CONF" ]] && rm -f "$ETC_CONF"
        rm -f "$STATE/linked-etc-conf"
    fi
    say "down"
}

cmd_status() {
    if [[ -f "$CONF" ]] && cluster_answers; then
        sinfo
        return 0
    fi
    say "not running ($STATE)"
    return 1
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
