#!/usr/bin/env bash
# Several "hosts" on one machine, for multi-host tests and benchmarks (needs root and iproute2's `ip netns`):
#   Launch/netns.sh up NAME N SUBNET_PREFIX [RATE [DELAY]]  N network namespaces NAME-h0.. joined by veth pairs to a
#                                                           bridge in NAME-sw; host i gets PREFIX.(i+1)/24;
#                                                           RATE (10gbit, 1gbit, ...) and DELAY (0.1ms) limit each
#                                                           host's link in both directions (tc tbf + netem)
#   Launch/netns.sh shape NAME RATE [DELAY]                 change the limit ("none" removes it)
#   Launch/netns.sh cut NAME HOST                           take host HOST's link down (a pulled cable)
#   Launch/netns.sh down NAME                               end the processes left inside and delete everything
#   Launch/netns.sh agent HOST COMMAND...                   Open MPI's remote launch agent (plm_rsh_agent): runs
#                                                           COMMAND in namespace HOST instead of over ssh
#   Launch/netns.sh hostfile NAME N DIR                     writes DIR/hostfile (one slot a host) and DIR/rankfile
#                                                           (rank i on core i mod cores: every namespace sees the
#                                                           same cores, so Open MPI would bind each rank to core 0)
# Traffic stays on the private subnet between the namespaces: the bridge lives in a namespace of its own, nothing
# is routed to or from the machine's own interfaces.
set -euo pipefail
usage() { sed -n '2,16p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
command=$1; shift

hosts() { ip netns list | awk -v p="$1-h" 'index($1, p) == 1 { print $1 }' | sort -V; }

# tc on one end of a host's link: a token bucket at RATE, then netem's DELAY (netem alone would queue unboundedly).
shape_link() { # namespace device rate delay
    local ns=$1 dev=$2 rate=$3 delay=${4:-}
    ip netns exec "$ns" tc qdisc del dev "$dev" root 2>/dev/null || true
    [ "$rate" = none ] && return 0
    # A burst of at least one 1 ms's worth of bytes keeps tbf accurate at high rates with a 1000 Hz timer.
    local bits; bits=$(numfmt --from=si "$(tr a-z A-Z <<<"${rate%bit}")")
    local burst=$(( bits / 8 / 1000 > 32768 ? bits / 8 / 1000 : 32768 ))
    ip netns exec "$ns" tc qdisc add dev "$dev" root handle 1: tbf rate "$rate" burst "$burst" latency 50ms
    if [ -n "$delay" ] && [ "$delay" != 0 ]; then
        ip netns exec "$ns" tc qdisc add dev "$dev" parent 1:1 handle 10: netem delay "$delay" \
            || { echo "netns.sh: tc's netem (a delay) is not in this kernel (sch_netem): leave DELAY out" >&2; return 1; }
    fi
}

case $command in
up)
    [ $# -ge 3 ] || usage
    name=$1 count=$2 prefix=$3 rate=${4:-none} delay=${5:-}
    [[ $count =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] && [ "$count" -le 200 ] || { echo "netns.sh: host count '$count' is not 1..200" >&2; exit 2; }
    [[ $prefix =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "netns.sh: subnet prefix '$prefix' is not like 10.231.7" >&2; exit 2; }
    if ip netns list | awk '{ print $1 }' | grep -qx "$name-sw"; then echo "netns.sh: $name already exists" >&2; exit 1; fi
    # Undo a half-made set-up on any failure.
    trap '"$0" down "$name" >/dev/null 2>&1 || true' ERR
    ip netns add "$name-sw"
    ip -n "$name-sw" link add br0 type bridge
    ip -n "$name-sw" link set br0 up
    for ((i = 0; i < count; i++)); do
        ns=$name-h$i
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # Veth names are limited to 15 characters: the host's index names both ends.
        ip link add "sth$$x$i" type veth peer name "sts$$x$i"
        ip link set "sth$$x$i" netns "$ns" name eth0
        ip link set "sts$$x$i" netns "$name-sw" name "port$i"
        ip -n "$name-sw" link set "port$i" master br0 up
        ip -n "$ns" addr add "$prefix.$((i + 1))/24" dev eth0
        ip -n "$ns" link set eth0 up
        shape_link "$ns" eth0 "$rate" "$delay"
        shape_link "$name-sw" "port$i" "$rate" "$delay"
    done
    ;;
shape)
    [ $# -ge 2 ] || usage
    name=$1 rate=$2 delay=${3:-}
    i=0
    for ns in $(hosts "$name"); do
        shape_link "$ns" eth0 "$rate" "$delay"
        shape_link "$name-sw" "port$i" "$rate" "$delay"
        i=$((i + 1))
    done
    ;;
cut)
    [ $# -eq 2 ] || usage
    ip -n "$1-sw" link set "port$2" down
    ip -n "$1-h$2" link set eth0 down
    ;;
down)
    [ $# -eq 1 ] || usage
    name=$1
    for ns in $(hosts "$name") "$name-sw"; do
        ip netns list | awk '{ print $1 }' | grep -qx "$ns" || continue
        # Processes a failed run left behind would keep the namespace (and their ports) alive.
        pids=$(ip netns pids "$ns" || true)
        [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
        ip netns del "$ns"
    done
    ;;
agent)
    [ $# -ge 2 ] || usage
    host=$1; shift
    exec ip netns exec "$host" sh -c "$*"
    ;;
hostfile)
    [ $# -eq 3 ] || usage
    name=$1 count=$2 dir=$3 cores=$(nproc)
    for ((i = 0; i < count; i++)); do echo "$name-h$i slots=1"; done > "$dir/hostfile"
    for ((i = 0; i < count; i++)); do echo "rank $i=$name-h$i slot=$((i % cores))"; done > "$dir/rankfile"
    ;;
*) usage ;;
esac
