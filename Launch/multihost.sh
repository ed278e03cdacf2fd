#!/usr/bin/env bash
# Several machines: Launch/multihost.sh [OPTIONS] HOSTFILE IFACE_OR_SUBNET starling-arguments...
#   Launch/multihost.sh Launch/hostfile.example 10.0.0.0/24 train --model fc-ae --data /shared/mnist.h5
# Requirements: passwordless ssh between the hosts, the same starling binary path and the same data path on every
# host (a shared file system; rank 0 writes the checkpoints).
# The interface flags prevent the classic multi-node hang: Open MPI otherwise tries every interface it finds
# (docker0, virbr0, a second NIC without a route) for its out-of-band and TCP traffic and waits forever on the
# unreachable ones. Name the one network the hosts share, for both the runtime (oob) and the data (btl).
# Options (for hosts that are not separate machines, as Launch/netns.sh makes them; also for clusters without ssh):
#   --agent COMMAND   the remote launch agent instead of ssh (Open MPI's plm_rsh_agent: COMMAND HOST ORTED-COMMAND)
#   --rankfile FILE   place ranks on cores explicitly (`rank 0=host slot=0`) instead of --bind-to core
#   --host-timeout S  declare a host lost when its link has not answered for about S seconds (TCP keepalive on the
#                     runtime's connections; default 60): mpirun then ends the job with "ORTE has lost communication
#                     with a remote daemon" and the daemons on both sides end their ranks. Keep it below the
#                     watchdog's --watchdog-seconds + --watchdog-abort-seconds: an MPI_Abort sent over a dead link
#                     leaves mpirun waiting for the lost host for ever. Open MPI's own default is 480 s.
#   --tcp-only        no shared memory between ranks that report the same host name: namespaces share the machine's
#                     name, and Open MPI would otherwise pass their traffic through shared memory, not the network
set -euo pipefail
agent= rankfile= btl=self,vader,tcp host_timeout=60
while [ $# -gt 0 ]; do
    case $1 in
    --agent) agent=${2:?--agent needs a command}; shift 2 ;;
    --rankfile) rankfile=${2:?--rankfile needs a file}; shift 2 ;;
    --host-timeout) host_timeout=${2:?--host-timeout needs seconds}; shift 2 ;;
    --tcp-only) btl=self,tcp; shift ;;
    *) break ;;
    esac
done
hostfile=${1:?usage: Launch/multihost.sh [--agent COMMAND] [--rankfile FILE] [--host-timeout S] [--tcp-only] HOSTFILE IFACE_OR_SUBNET starling-arguments...}
network=${2:?name the interface (eth0) or subnet (10.0.0.0/24) the hosts share}
shift 2
[ -r "$hostfile" ] || { echo "multihost.sh: cannot read the hostfile $hostfile" >&2; exit 2; }
bin=${STARLING_BIN:-$(cd "$(dirname "$0")/.." && swift build -c release --show-bin-path)/starling}
ranks=$(awk '!/^#/ && NF { for (i = 1; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); n += a[2] } } END { print n + 0 }' "$hostfile")
[ "$ranks" -gt 0 ] || { echo "multihost.sh: $hostfile gives no slots (lines like 'node1 slots=2')" >&2; exit 2; }
[[ $host_timeout =~ ^[0-9]+$ ]] && [ "$host_timeout" -ge 3 ] || { echo "multihost.sh: --host-timeout '$host_timeout' is not a whole number of seconds >= 3" >&2; exit 2; }
# Idle for a third of the time, then three probes a ninth apart (rounded down to whole seconds, at least 1).
keepalive=$((host_timeout / 3)) interval=$((host_timeout * 2 / 9 > 0 ? host_timeout * 2 / 9 : 1))
extra=(--mca oob_tcp_keepalive_time "$keepalive" --mca oob_tcp_keepalive_intvl "$interval" --mca oob_tcp_keepalive_probes 3)
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
[ -n "$agent" ] && extra+=(--mca plm_rsh_agent "$agent")
if [ -n "$rankfile" ]; then
    [ -r "$rankfile" ] || { echo "multihost.sh: cannot read the rankfile $rankfile" >&2; exit 2; }
    extra+=(--rankfile "$rankfile")
else
    extra+=(--bind-to core --map-by slot)
fi
exec mpirun -np "$ranks" --hostfile "$hostfile" "${extra[@]}" \
  --mca btl "$btl" --mca btl_tcp_if_include "$network" --mca oob_tcp_if_include "$network" \
  -x OPENBLAS_NUM_THREADS=1 -x PATH -x LD_LIBRARY_PATH \
  "$bin" "$@"
