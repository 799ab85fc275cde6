#!/usr/bin/env bash
# A single-node SLURM cluster and a PostgreSQL server on this machine, for the tests marked
# `slurm` (tests/test_slurm*.py): `.ci/cluster.sh start` (idempotent: installs the Debian packages
# if missing, starts what is not running, waits until the node is idle) and `.ci/cluster.sh stop`.
# Needs root and Debian/Ubuntu (apt). No accounting database (slurmdbd): `sacct` is not available.
#
#   SLURM: munge key, /etc/slurm/slurm.conf with this host as the only node (its CPUs, its memory
#          less 1 GiB), ProctrackType=proctrack/pgid, TaskPlugin=task/none,
#          SelectType=select/cons_tres (CR_CPU: memory is not a scheduled resource), partition
#          `debug`; daemons run as root, logs in /var/log/slurm/.
#   PostgreSQL: the Debian cluster (version 15 on Debian 12) on 127.0.0.1:5432, role `dml`
#          (password `dml`, may create databases), database `dml`:
#          postgresql+psycopg://dml:dml@127.0.0.1:5432/dml (tests read $DML_POSTGRES_URL).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge postgresql)
CONF=/etc/slurm/slurm.conf
WAIT_S=${DML_CLUSTER_WAIT_S:-60}

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  local out
  out=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "could not install ${missing[*]}"
  fi
  rm -f "$out"
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
  local new
  new=$(cat <<EOF
# Written by .ci/cluster.sh: a one-node test cluster.
ClusterName=dml-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=sched_interval=2
MinJobAge=300
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
  if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new" ]; then
    echo "$new" >"$CONF"
    CONF_CHANGED=1
  fi
}

# A daemon by its pid file (never by name: other processes of the same name are not ours).
pidfile() { case "$1" in munged) echo /run/munge/munged.pid ;; *) echo "/run/slurm/$1.pid" ;; esac; }
running() { local f; f=$(pidfile "$1"); [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
terminate() {
  running "$1" || return 0
  local pid; pid=$(cat "$(pidfile "$1")")
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  die "$1 (pid $pid) did not stop"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  running munged || runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

start_slurm() {
  if [ "${CONF_CHANGED:-0}" = 1 ]; then
    terminate slurmd
    terminate slurmctld
  fi
  running slurmctld || slurmctld
  running slurmd || slurmd
  local host state
  host=$(hostname -s)
  for _ in $(seq "$WAIT_S"); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
      idle|mixed|allocated) log "SLURM node $host $state"; return ;;
      down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  die "SLURM node $host not idle after ${WAIT_S}s (state '${state:-none}'; see /var/log/slurm/)"
}

start_postgres() {
  local version
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  [ -n "$version" ] || die "no PostgreSQL server installed"
  pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
  pg_lsclusters -h | grep -q "^$version main .* online" || pg_ctlcluster "$version" main start
  local sql="psql -v ON_ERROR_STOP=1 -qtA"
  runuser -u postgres -- $sql -c "SELECT 1 FROM pg_roles WHERE rolname='dml'" | grep -q 1 ||
    runuser -u postgres -- $sql -c "CREATE ROLE dml LOGIN CREATEDB PASSWORD 'dml'"
  runuser -u postgres -- $sql -c "SELECT 1 FROM pg_database WHERE datname='dml'" | grep -q 1 ||
    runuser -u postgres -- $sql -c "CREATE DATABASE dml OWNER dml"
  PGPASSWORD=dml psql -h 127.0.0.1 -U dml -d dml -qtAc "SELECT 1" >/dev/null ||
    die "PostgreSQL $version does not accept dml@127.0.0.1"
  log "PostgreSQL $version on 127.0.0.1:5432 (postgresql+psycopg://dml:dml@127.0.0.1:5432/dml)"
}

stop() {
  for daemon in slurmd slurmctld munged; do terminate "$daemon"; done
  local version
  for version in $(pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1}'); do
    pg_ctlcluster "$version" main stop
  done
  log "stopped"
}

case "${1:-start}" in
  start)
    [ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts daemons)"
    install_packages
    write_conf
    start_munge
    start_slurm
    start_postgres
    ;;
  stop) stop ;;
  *) die "usage: $0 [start|stop]" ;;
esac
