#!/bin/bash
# bench/run.sh — the ebpfw benchmark suite (`make bench`). Prints a markdown report and writes
# it, with the raw JSON/CSV, under bench-results/<timestamp>/ (BENCH_OUT=DIR to choose).
#
#   sudo bench/run.sh            full run, ~10-11 min on the 2-vCPU VM (hard budget: 15 min)
#   sudo QUICK=1 bench/run.sh    ~2.5 min: fewer sizes and repetitions, no 100k (budget: 5 min)
#   DEADLINE=SECONDS overrides the budget; a step that would start past it is skipped and
#   reported, a running step is stopped at it (its partial results are kept).
#   SECTIONS="testrun update kit" (default: all three) selects parts.
#
# Sections (see bench/README.md and docs/PERFORMANCE.md):
#   testrun  per-packet cost (BPF_PROG_TEST_RUN), kernel memory, verifier sizes  -> testrun.json
#   update   apply latency (library, CLI) vs iptables-nft/legacy and nft; compile  -> update.json;
#            CLI through a running agent vs CLI alone                            -> cli_agent.json
#   kit      throughput with real packets: the shared kit (bench/kit), section A (+ C in full)
#
# Safety: everything runs in namespaces created here (both veth ends inside them), with a
# private bpffs; every loop is bounded in count and time; the EXIT trap removes whatever a
# killed step left behind (names recorded in $BENCH_REGISTRY as they are created).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
PY=$ROOT/.venv/bin/python
QUICK=${QUICK:-0}
SECTIONS=${SECTIONS:-"testrun update kit"}
KIT=${KIT:-$ROOT/bench/kit}
OUT=${BENCH_OUT:-$ROOT/bench-results/$(date +%Y%m%d-%H%M%S)}
T0=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run as root (namespaces, bpffs, BPF programs)" >&2; exit 1; }
[ -x "$PY" ] || { echo "bench/run.sh: $PY missing; run 'make setup' first" >&2; exit 1; }
mkdir -p "$OUT" || exit 1
export BENCH_OUT=$OUT
export BENCH_REGISTRY=$OUT/.created
: >"$BENCH_REGISTRY"
TMPD=$(mktemp -d /tmp/ebwb-run.XXXXXX)
CHILD=
# measure one version of the code: a snapshot of ebpfw/ and programs/ as they are now (others may
# commit while the bench runs); every ebpfw process of the run imports it through PYTHONPATH
SRC=$TMPD/src
mkdir -p "$SRC" && cp -a ebpfw programs "$SRC/" && find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
export EBPFW_SRC=$SRC PYTHONPATH=$SRC

log() { echo "[bench $(date +%H:%M:%S) +$(($(date +%s) - T0))s] $*" >&2; }

cleanup() {
	# a running step (our child, by its pid) is stopped first; its own cleanup usually runs
	if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
		kill -TERM "$CHILD" 2>/dev/null
		for _ in $(seq 1 50); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$CHILD" 2>/dev/null
	fi
	# whatever is still registered: only names and paths this run created
	if [ -s "$BENCH_REGISTRY" ]; then
		while read -r kind what; do
			case $kind in
			netns) [ -e "/run/netns/$what" ] && ip netns del "$what" 2>/dev/null ;;
			mount) mountpoint -q "$what" 2>/dev/null && umount -l "$what" ;;
			memcg) [ -d "$what" ] && rmdir "$what" 2>/dev/null ;;
			esac
		done <"$BENCH_REGISTRY"
	fi
	mountpoint -q "$TMPD/bpffs" 2>/dev/null && umount -l "$TMPD/bpffs"
	rm -rf "$TMPD"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# run one step in the background (so the trap can stop it), bounded by its own time limit and
# by what is left of the run's overall budget (DEADLINE seconds from the start)
step() { # seconds cmd...
	local limit=$1
	shift
	local left=$((DEADLINE - ($(date +%s) - T0)))
	if [ $left -lt 30 ]; then
		log "run budget of ${DEADLINE}s used up, skipping: $*"
		return 124
	fi
	[ $limit -gt $left ] && limit=$left
	"$@" &
	CHILD=$!
	local waited=0
	while kill -0 "$CHILD" 2>/dev/null; do
		if [ $waited -ge $((limit * 5)) ]; then
			log "step exceeded ${limit}s, stopping it: $*"
			kill -TERM "$CHILD" 2>/dev/null
			sleep 5
			kill -KILL "$CHILD" 2>/dev/null
			break
		fi
		sleep 0.2
		waited=$((waited + 1))
	done
	wait "$CHILD"
	local rc=$?
	CHILD=
	return $rc
}

if [ "$QUICK" = 1 ]; then
	TR_SIZES=1,10,1000,10000 TR_RUNS=3 TR_TIMEOUT=120 TR_FIELDS=
	UPD_REPS=2 UPD_CHECK=10000
	KIT_ENV=(SECTIONS=A PATHS=input NS_A="1 10000" REPS=1 DUR=1 FILTERS_INPUT="ipt-nft ebpfw ebpfw-drop")
	KIT_LIMIT=150
	KITM_ENV=()
	DEADLINE=${DEADLINE:-300}
else
	TR_SIZES=1,10,100,1000,10000,100000 TR_RUNS=7 TR_TIMEOUT=240 TR_FIELDS=--fields
	UPD_REPS=5 UPD_CHECK=10000,100000
	KIT_ENV=(SECTIONS=AC PATHS=input NS_A="1 1000 10000" REPS=3 NS_C=10000 REPS_C=3
		FILTERS_INPUT="ipt-nft nft-set ebpfw ebpfw-tc ebpfw-drop")
	KIT_LIMIT=420
	DEADLINE=${DEADLINE:-900}
	# second kit run: the same packets against ebpfw's mixed ruleset (kit/lib/filters.sh KIT_RULES)
	KITM_ENV=(SECTIONS=A PATHS=input NS_A="10000" REPS=3 KIT_RULES=mixed FILTERS_INPUT="ipt-nft ipt-legacy nft-linear ebpfw")
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- ebpfw programs 2>/dev/null | wc -l)
"$PY" - "$OUT/env.json" "$QUICK" "$COMMIT" "$DIRTY" <<'EOF'
import json, os, platform, sys, time
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "kernel": platform.release(), "nproc": os.cpu_count(),
           "cpu": cpu, "loadavg_start": open("/proc/loadavg").read().split()[0],
           "commit": sys.argv[3], "dirty_files": int(sys.argv[4]),
           "command": ("QUICK=1 " if sys.argv[2] == "1" else "") + "make bench"}, open(sys.argv[1], "w"))
EOF
# the snapshot is what gets imported (checked once, so a broken setup fails here, not later)
got=$("$PY" "$ROOT/bench/benchlib.py" --which-ebpfw) || exit 1
[ "$got" = "$SRC/ebpfw/__init__.py" ] || { echo "bench/run.sh: imports $got, not the snapshot $SRC" >&2; exit 1; }
log "results -> $OUT (QUICK=$QUICK, sections: $SECTIONS)"

if [[ " $SECTIONS " == *" testrun "* ]]; then
	log "section 1: BPF_PROG_TEST_RUN per-packet cost, memory, verifier (sizes $TR_SIZES)"
	step 480 "$PY" bench/testrun.py --sizes "$TR_SIZES" --runs "$TR_RUNS" --timeout "$TR_TIMEOUT" $TR_FIELDS --out "$OUT" ||
		log "testrun step failed (rc $?)"
fi

if [[ " $SECTIONS " == *" update "* ]]; then
	log "section 3: update latency (ebpfw library and CLI, iptables-nft/legacy, nft), compile time"
	step 300 "$PY" bench/update.py --n 10000 --reps "$UPD_REPS" --check-sizes "$UPD_CHECK" --out "$OUT" ||
		log "update step failed (rc $?)"
	step 180 "$PY" bench/cli_agent.py --n 10000 --reps 6 --out "$OUT" ||
		log "cli_agent step failed (rc $?)"
fi

if [[ " $SECTIONS " == *" kit "* ]]; then
	missing=
	for t in clang xdp-filter ethtool taskset bpftool iptables-legacy-restore nft gcc; do
		command -v "$t" >/dev/null || missing="$missing $t"
	done
	[ -e /usr/include/bpf/bpf_helpers.h ] || missing="$missing libbpf-dev"
	if ! "$ROOT/.venv/bin/ebpfw" --help >/dev/null 2>&1; then
		missing="$missing ebpfw-CLI"
	fi
	if [ -n "$missing" ]; then
		echo "the kit needs:$missing (apt-get install clang libbpf-dev xdp-tools; the ebpfw CLI)" >"$OUT/kit.skipped"
		log "section 2 skipped: $(cat "$OUT/kit.skipped")"
	else
		mkdir -p "$TMPD/bpffs" "$TMPD/state"
		mount -t bpf bpf "$TMPD/bpffs"
		kit_run() { # name limit env...
			local name=$1 limit=$2
			shift 2
			log "section 2: throughput with real packets, $name (kit: $*)"
			# ebpfw inside the kit pins into a private bpffs and keeps its state in $TMPD/state
			if ! step "$limit" env "$@" EBPFW="$ROOT/.venv/bin/ebpfw" EBPFW_BPFFS="$TMPD/bpffs" \
				EBPFW_STATE_DIR="$TMPD/state" GEN_RULES="$ROOT/bench/gen_rules.py" OUTD="$OUT/$name" \
				"$KIT/run.sh" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr"; then
				log "kit step $name failed, see $OUT/$name.stderr"
				[ -e "$OUT/$name/report.md" ] || tail -5 "$OUT/$name.stderr" | sed 's/^/kit failed: /' >"$OUT/$name.skipped"
			fi
		}
		kit_run kit "$KIT_LIMIT" "${KIT_ENV[@]}"
		[ ${#KITM_ENV[@]} -gt 0 ] && kit_run kit-mixed 180 "${KITM_ENV[@]}"
		umount -l "$TMPD/bpffs"
	fi
fi

"$PY" - "$OUT/env.json" "$T0" <<'EOF'
import json, sys, time
p = sys.argv[1]
d = json.load(open(p))
d["loadavg_end"] = open("/proc/loadavg").read().split()[0]
d["runtime_s"] = int(time.time() - int(sys.argv[2]))
json.dump(d, open(p, "w"))
EOF
"$PY" bench/report.py "$OUT" | tee "$OUT/report.md"
log "done in $(($(date +%s) - T0)) s; report: $OUT/report.md"
