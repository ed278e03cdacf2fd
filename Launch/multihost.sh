#!/usr/bin/env bash
# Several machines: Launch/multihost.sh HOSTFILE IFACE_OR_SUBNET starling-arguments...
#   Launch/multihost.sh Launch/hostfile.example 10.0.0.0/24 train --model fc-ae --data /shared/mnist.h5
# Requirements: passwordless ssh between the hosts, the same starling binary path and the same data path on every
# host (a shared file system; rank 0 writes the checkpoints).
# The interface flags prevent the classic multi-node hang: Open MPI otherwise tries every interface it finds
# (docker0, virbr0, a second NIC without a route) for its out-of-band and TCP traffic and waits forever on the
# unreachable ones. Name the one network the hosts share, for both the runtime (oob) and the data (btl).
set -euo pipefail
hostfile=${1:?usage: Launch/multihost.sh HOSTFILE IFACE_OR_SUBNET starling-arguments...}
network=${2:?name the interface (eth0) or subnet (10.0.0.0/24) the hosts share}
shift 2
bin=${STARLING_BIN:-$(cd "$(dirname "$0")/.." && swift build -c release --show-bin-path)/starling}
ranks=$(awk '!/^#/ && NF { for (i = 1; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); n += a[2] } } END { print n }' "$hostfile")
extra=()
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
exec mpirun -np "$ranks" --hostfile "$hostfile" "${extra[@]}" \
  --mca btl self,vader,tcp --mca btl_tcp_if_include "$network" --mca oob_tcp_if_include "$network" \
  --bind-to core --map-by slot -x OPENBLAS_NUM_THREADS=1 -x PATH -x LD_LIBRARY_PATH \
  "$bin" "$@"
