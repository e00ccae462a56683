#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the tests of bigmm's SLURM path
# (tests/test_slurm.py): munge with a fresh key, slurmctld and slurmd, one node (this host)
# in one partition "debug". Needs root and Debian's slurm-wlm + munge (installed here when
# missing). Idempotent: a running cluster is left as it is. Prints "slurm: ready" when sinfo
# shows the node idle, else why not (and exits non-zero).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then echo "slurm: needs root" >&2; exit 1; fi
# one start at a time: the test suite runs its files in two processes, and two of them start SLURM.
# The daemons started below must not inherit the lock's descriptor (9>&-): munged keeps the
# descriptors it is given, and a lock held by a daemon blocked every later start for good.
exec 9>/tmp/bigmm-slurm-local.lock
flock -w 240 9 || { echo "slurm: another start of slurm-local.sh held /tmp/bigmm-slurm-local.lock for 240 s" >&2; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; } ||
    { echo "slurm: could not install slurm-wlm and munge with apt-get" >&2; exit 1; }
fi
host=$(hostname -s)
if pgrep -x slurmd >/dev/null && sinfo -h -o '%T' 2>/dev/null | grep -Eq 'idle|mixed|alloc'; then
  echo "slurm: ready (already running)"; exit 0
fi

# munge: a key of this machine, the daemon
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged 2>/dev/null 9>&- || munged --force 9>&-

# slurm.conf: this host as the controller and the only node
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=bigmm-test
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmUser=root
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
rm -f /etc/slurm/cgroup.conf  # proctrack/linuxproc and task/none: no cgroups
pgrep -x slurmctld >/dev/null || slurmctld 9>&-
pgrep -x slurmd >/dev/null || slurmd 9>&-
for _ in $(seq 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -Eq 'idle|mixed'; then echo "slurm: ready ($host, $cpus CPUs, ${mem} MiB)"; exit 0; fi
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm: the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
