#!/bin/bash
# scripts/demo.sh — ebpfw in five minutes, in namespaces it makes and removes again (`make demo`).
#
# Contract: run as root after `make setup`. Builds three network namespaces joined by veth pairs
# whose both ends live inside them (nothing is attached to, or sent from, the host's own
# interfaces), mounts a private bpffs, imports rulesets/server-baseline.rules (or a built-in
# equivalent when that file is missing), applies it on the router namespace's two interfaces,
# sends traffic, prints `ebpfw show` and `ebpfw save --counters`, detaches and deletes
# everything (trap on EXIT/INT/TERM). Exit status 0 only if every expected allow/deny outcome
# and counter happened.
#
#   ebpfw-demo-<pid>-cli  cli0 10.200.1.2 ──── dut0 10.200.1.1  ebpfw-demo-<pid>-dut
#                                                dut1 10.200.2.1 ──── srv0 10.200.2.2  ebpfw-demo-<pid>-srv
#
# Environment: EBPFW (the ebpfw command, default .venv/bin/ebpfw), EBPFW_DEMO_MODE (apply --mode,
# default auto).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
EBPFW=${EBPFW:-$ROOT/.venv/bin/ebpfw}
MODE=${EBPFW_DEMO_MODE:-auto}
PY=/usr/bin/python3
TAG="ebpfw-demo-$$"
CLI="$TAG-cli" DUT="$TAG-dut" SRV="$TAG-srv"
CLI_IP=10.200.1.2 DUT0_IP=10.200.1.1 DUT1_IP=10.200.2.1 SRV_IP=10.200.2.2
RULESET_SRC=rulesets/server-baseline.rules
PINGS=3

if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B= N=; fi
say()  { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
die()  { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it creates network namespaces and loads BPF programs): sudo make demo"
[ -x "$EBPFW" ] || die "$EBPFW not found; run 'make setup' first (make demo does)"
for cmd in ip nsenter ping mount "$PY"; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is missing; run 'make setup'"
done

WORK=$(mktemp -d /tmp/ebpfw-demo.XXXXXX)
BPFFS="$WORK/bpffs"
PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    if [ -e "/run/netns/$DUT" ] && mountpoint -q "$BPFFS" 2>/dev/null; then
        nsenter --net="/run/netns/$DUT" "$EBPFW" detach >/dev/null 2>&1
    fi
    for ns in "$CLI" "$DUT" "$SRV"; do
        [ -e "/run/netns/$ns" ] && ip netns delete "$ns"
    done
    mountpoint -q "$BPFFS" 2>/dev/null && umount -l "$BPFFS"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }
eb()    { in_ns "$DUT" "$EBPFW" "$@"; }

# ---- topology -----------------------------------------------------------------------------------
say "creating namespaces $CLI, $DUT, $SRV (veth pairs with both ends inside them)"
for ns in "$CLI" "$DUT" "$SRV"; do
    ip netns add "$ns"
    in_ns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$ns" link set lo up
done
ip link add cli0 netns "$CLI" type veth peer name dut0 netns "$DUT"
ip link add dut1 netns "$DUT" type veth peer name srv0 netns "$SRV"
ip -n "$CLI" addr add "$CLI_IP/24" dev cli0
ip -n "$DUT" addr add "$DUT0_IP/24" dev dut0
ip -n "$DUT" addr add "$DUT1_IP/24" dev dut1
ip -n "$SRV" addr add "$SRV_IP/24" dev srv0
for pair in "$CLI cli0" "$DUT dut0" "$DUT dut1" "$SRV srv0"; do
    set -- $pair; ip -n "$1" link set "$2" up
done
ip -n "$CLI" route add default via "$DUT0_IP"
ip -n "$SRV" route add default via "$DUT1_IP"
in_ns "$DUT" sysctl -qw net.ipv4.ip_forward=1

say "mounting a private bpffs at $BPFFS (pins go there, state to $WORK/state)"
mkdir -p "$BPFFS" "$WORK/state"
mount -t bpf bpf "$BPFFS"
export EBPFW_BPFFS="$BPFFS" EBPFW_STATE_DIR="$WORK/state"

# ---- listeners ------------------------------------------------------------------------------------
LISTENER='
import socket, selectors, sys, time
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
end = time.monotonic() + 600
while time.monotonic() < end:
    for key, _ in sel.select(timeout=1):
        c, _ = key.fileobj.accept(); c.sendall(b"hi"); c.close()
'
start_listener() {   # ns port...
    local ns=$1; shift
    local fifo="$WORK/ready.$ns"
    mkfifo "$fifo"
    in_ns "$ns" "$PY" -c "$LISTENER" "$@" >"$fifo" &
    PIDS+=($!)
    local line; read -r -t 10 line <"$fifo" || true
    [ "$line" = ready ] || die "the TCP listener in $ns did not start"
}
start_listener "$DUT" 22 80
start_listener "$SRV" 80

CONNECT='
import socket, sys
s = socket.socket(); s.settimeout(1.5)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open" if s.recv(2) == b"hi" else "odd")
except socket.timeout:
    print("blocked")
except OSError as e:
    print("error:", e.strerror)
'
tcp_probe()  { in_ns "$1" "$PY" -c "$CONNECT" "$2" "$3"; }
ping_probe() { if in_ns "$1" ping -n -q -c "$3" -i 0.2 -W 1 "$2" >/dev/null 2>&1; then echo open; else echo blocked; fi; }

FAILS=0
expect() {   # expected actual description
    if [ "$1" = "$2" ]; then
        printf '  ok    %-58s %s\n' "$3" "$2"
    else
        printf '  FAIL  %-58s %s (expected %s)\n' "$3" "$2" "$1"
        FAILS=$((FAILS + 1))
    fi
}

say "without ebpfw: everything gets through"
expect open "$(ping_probe "$CLI" "$DUT0_IP" 1)"     "ping cli -> dut ($DUT0_IP)"
expect open "$(tcp_probe "$CLI" "$DUT0_IP" 22)"     "tcp cli -> dut:22 (ssh, from outside the admin net)"
expect open "$(tcp_probe "$CLI" "$DUT0_IP" 80)"     "tcp cli -> dut:80 (web)"
expect open "$(tcp_probe "$CLI" "$SRV_IP" 80)"      "tcp cli -> srv:80 (forwarded through dut)"
[ "$FAILS" -eq 0 ] || die "the demo network itself does not work; not a firewall problem"

# ---- the ruleset ----------------------------------------------------------------------------------
if [ -r "$RULESET_SRC" ]; then
    say "importing $RULESET_SRC (an iptables-save file)"
    cp "$RULESET_SRC" "$WORK/iptables-save.txt"
else
    say "$RULESET_SRC is missing: importing a built-in stateless server ruleset"
    cat >"$WORK/iptables-save.txt" <<'EOF'
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -s 192.168.50.0/24 -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j DROP
-A INPUT -p tcp -m multiport --dports 80,443 -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -p icmp -j DROP
-A OUTPUT -p tcp -m multiport --dports 25,465,587 -j DROP
COMMIT
EOF
fi
"$EBPFW" import "$WORK/iptables-save.txt" -o "$WORK/rules.v4"
echo "\$ ebpfw import iptables-save.txt -o rules.v4   # checked, canonical:"
sed 's/^/    /' "$WORK/rules.v4"
echo "\$ ebpfw check rules.v4"
"$EBPFW" check "$WORK/rules.v4"

say "ebpfw apply rules.v4 --iface dut0 --iface dut1 --mode $MODE   (inside $DUT)"
eb apply "$WORK/rules.v4" --iface dut0 --iface dut1 --mode "$MODE"

say "with ebpfw: the ruleset decides"
expect open    "$(ping_probe "$CLI" "$DUT0_IP" "$PINGS")" "ping cli -> dut ($PINGS echo requests, INPUT accepts type 8)"
expect blocked "$(tcp_probe "$CLI" "$DUT0_IP" 22)"        "tcp cli -> dut:22 (INPUT drops ssh from outside)"
expect open    "$(tcp_probe "$CLI" "$DUT0_IP" 80)"        "tcp cli -> dut:80 (INPUT accepts 80,443)"
expect blocked "$(tcp_probe "$CLI" "$SRV_IP" 80)"         "tcp cli -> srv:80 (FORWARD policy DROP)"
expect open    "$(ping_probe "$SRV" "$DUT1_IP" 1)"        "ping srv -> dut ($DUT1_IP, on the second interface)"

say "ebpfw show"
eb show

say "ebpfw save --counters"
eb save --counters | tee "$WORK/saved.txt"

pkts() {   # packets of the first rule line containing $1, or of chain policy line ":$1 "
    awk -v pat="$1" '
        index($0, pat) && /^\[/ { split(substr($1, 2), a, ":"); print a[1]; exit }
        index($0, ":" pat " ") == 1 { split($3, a, ":"); sub(/^\[/, "", a[1]); print a[1]; exit }
    ' "$WORK/saved.txt"
}
atleast() { local n=${2:-0}; if [ "$n" -ge "$1" ]; then echo ">=$1"; else echo "$n"; fi; }

say "counters match the traffic"
expect "$((PINGS + 1))" "$(pkts '--icmp-type 8')"            "echo-request rule: $PINGS + 1 packets"
expect ">=1" "$(atleast 1 "$(pkts '--dport 22 -j DROP')")"    "ssh DROP rule: the SYN (and retries)"
expect ">=3" "$(atleast 3 "$(pkts '--dports 80,443')")"       "web ACCEPT rule: SYN, ACK, FIN at least"
expect ">=1" "$(atleast 1 "$(pkts FORWARD)")"                    "FORWARD policy DROP: the forwarded SYN"

say "ebpfw detach"
eb detach
left=$(in_ns "$DUT" ip -d link show dev dut0 | grep -c 'prog/xdp' || true)
left=$((left + $(ip -n "$DUT" -d link show dev dut1 | grep -c 'prog/xdp' || true)))
left=$((left + $(tc -n "$DUT" qdisc show | grep -c clsact || true)))
expect 0 "$left" "XDP programs and clsact qdiscs left on dut0/dut1"
expect open "$(tcp_probe "$CLI" "$DUT0_IP" 22)" "tcp cli -> dut:22 after detach"

echo
if [ "$FAILS" -ne 0 ]; then
    printf 'demo: %d expectation(s) failed\n' "$FAILS" >&2
    exit 1
fi
echo "demo: all expectations met; cleaning up namespaces and the bpffs mount"
