#!/bin/bash
# scripts/setup.sh — make this Debian 12 checkout ready to build, test and run ebpfw.
#
# Contract: idempotent and quick when everything is already present (no apt-get, no pip).
# Run as root (apt, the /lib/modules header links and the bpffs mount need it); as a normal
# user it only checks the system and (re)builds the venv, and says what root must do.
#   1. Debian packages (apt-get update only when one is missing).
#   2. Kernel headers for bcc: when the running kernel has none under /lib/modules/$(uname -r),
#      link build -> newest /usr/src/linux-headers-*-amd64 and source -> the matching -common.
#   3. bpffs mounted at /sys/fs/bpf (systemd normally does this at boot).
#   4. .venv built on Debian's /usr/bin/python3 with --system-site-packages (bcc lives there),
#      `pip install -e '.[test]'` re-run only when pyproject.toml is newer than the stamp.
#   5. Verify: the imports work and bcc compiles and loads a trivial program.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.ebpfw-pip-stamp"
PY=/usr/bin/python3

say()  { printf 'setup: %s\n' "$*"; }
die()  { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1

# ---- 1. Debian packages ----------------------------------------------------------------
PKGS=(python3-bpfcc bpfcc-tools linux-headers-amd64 iproute2 iptables nftables bpftool
      python3-venv python3-pyroute2 ethtool conntrack kmod man-db iputils-ping
      ufw)   # ufw: rulesets/ufw-generated.sh makes a real ufw ruleset in a test namespace
# systemd-analyze (used by the unit-file test) comes with the systemd package.
command -v systemd-analyze >/dev/null 2>&1 || PKGS+=(systemd)

missing=()
for p in "${PKGS[@]}"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$st" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ $IS_ROOT -eq 0 ]; then
        die "missing Debian packages: ${missing[*]}; run as root: sudo make setup"
    fi
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# ---- 2. kernel headers for bcc ---------------------------------------------------------
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ -e "$MODDIR/build/include/linux/kconfig.h" ] || [ -e "$MODDIR/source/include/linux/kconfig.h" ]; then
    : # the running kernel has usable headers (its own, or links made earlier)
else
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$hdr" ] || die "no /usr/src/linux-headers-*-amd64 found; install linux-headers-amd64"
    common=${hdr%-amd64}-common
    [ -d "$common" ] || die "$hdr has no matching $common"
    if [ $IS_ROOT -eq 0 ]; then
        die "kernel $KREL has no headers for bcc; as root run: mkdir -p $MODDIR && ln -sfn $hdr $MODDIR/build && ln -sfn $common $MODDIR/source"
    fi
    say "kernel $KREL has no headers of its own: linking $MODDIR/build -> $hdr, source -> $common"
    mkdir -p "$MODDIR"
    ln -sfn "$hdr" "$MODDIR/build"
    ln -sfn "$common" "$MODDIR/source"
fi

# ---- 3. bpffs ---------------------------------------------------------------------------
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null || true)" != "bpf_fs" ]; then
    if [ $IS_ROOT -eq 1 ]; then
        say "mounting bpffs at /sys/fs/bpf"
        mkdir -p /sys/fs/bpf
        mount -t bpf bpf /sys/fs/bpf
    else
        say "warning: /sys/fs/bpf is not a bpffs (as root: mount -t bpf bpf /sys/fs/bpf)"
    fi
fi

# ---- 4. venv ------------------------------------------------------------------------------
venv_ok=0
if [ -x "$VENV/bin/python" ] && grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null \
   && grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" 2>/dev/null; then
    venv_ok=1
fi
if [ $venv_ok -eq 0 ]; then
    [ -e "$VENV" ] && { say "rebuilding $VENV (not a --system-site-packages venv of /usr/bin/python3)"; rm -rf "$VENV"; }
    say "creating $VENV"
    "$PY" -m venv --system-site-packages "$VENV"
fi
# the editable install must point at THIS checkout (a venv shared with another checkout or a
# worktree would otherwise import that tree's ebpfw)
installed=$(cd / && "$VENV/bin/python" -c 'import ebpfw, os; print(os.path.dirname(os.path.dirname(os.path.realpath(ebpfw.__file__))))' 2>/dev/null || true)
if [ ! -e "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$installed" != "$(pwd -P)" ]; then
    say "pip install -e '.[test]'"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
    touch "$STAMP"
fi

# ---- 5. verify ------------------------------------------------------------------------------
if ! err=$("$VENV/bin/python" -c 'import bcc, typer, rich, pyroute2, scapy' 2>&1); then
    die "the venv cannot import its dependencies:
$err
bcc comes from Debian's python3-bpfcc and only imports in /usr/bin/python3 and venvs built on it
with --system-site-packages (rm -rf .venv && make setup)."
fi
if [ $IS_ROOT -eq 1 ]; then
    if ! err=$("$VENV/bin/python" - 2>&1 <<'PYEOF'
from bcc import BPF
b = BPF(text="int ebpfw_setup_probe(struct __sk_buff *skb) { return 0; }")
b.load_func("ebpfw_setup_probe", BPF.SOCKET_FILTER)
PYEOF
    ); then
        die "bcc cannot compile and load a trivial program:
$err
check the kernel headers (ls -l $MODDIR/build $MODDIR/source) and run 'ebpfw doctor'."
    fi
fi
say "ok"
