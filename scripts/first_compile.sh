#!/usr/bin/env bash
# First compiles of one graph in fresh processes, each page policy in turn, with the host's
# memory in a known state, so that page policies can be compared (docs/runtime.md, "Huge
# pages"; docs/jit-history.md, session 14):
#
#   scripts/first_compile.sh GRAPH.yaml [REPS] [idle|warm] [POLICY...]
#
# POLICY is a value of CNNC_HUGE_PAGES (`auto`: unset, the default; `1`: every mapping
# advised huge and faulted in by its first writer, as before session 14; `0`: no
# mappings). `idle` (the default) sleeps 5 s before each process: a guest with free page
# reporting (virtio-balloon) has by then reported the blocks of 2 MiB and more that the last
# process freed, and the host faults each of their pages in again on first touch. `warm`
# runs a throwaway compile of the same graph right before, so the blocks it frees are still
# backed. Prints per process the compile and packing times, the median run (`cnnc bench`,
# 0.2 s, one thread) and the load. Uses target/release/cnnc (`cargo build --release`).
set -euo pipefail
graph=${1:?usage: first_compile.sh GRAPH.yaml [REPS] [idle|warm] [POLICY...]}
reps=${2:-3}
state=${3:-idle}
shift $(($# < 3 ? $# : 3))
policies=("$@")
[ ${#policies[@]} -gt 0 ] || policies=(auto 1 0)
cnnc="$(dirname "$0")/../target/release/cnnc"

run() { # POLICY, then cnnc's arguments
    local p=$1
    shift
    if [ "$p" = auto ]; then
        env -u CNNC_HUGE_PAGES "$cnnc" "$@"
    else
        env CNNC_HUGE_PAGES="$p" "$cnnc" "$@"
    fi
}

for _ in $(seq "$reps"); do
    for p in "${policies[@]}"; do
        case $state in
            idle) sleep 5 ;;
            warm) run 1 bench "$graph" --time 0 --runs 1 >/dev/null ;;
            *) echo "state must be idle or warm" >&2; exit 2 ;;
        esac
        json=$(run "$p" bench "$graph" --time 0.2 --json)
        echo "$json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
load = open("/proc/loadavg").read().split()[0]
print("CNNC_HUGE_PAGES=%-4s compile %7.1f ms  packing %7.1f ms  run median %7.2f ms  load %s"
      % (sys.argv[1], d["compile_ms"], d.get("packing_ms") or 0, d["median_ms"], load))
' "$p"
    done
done
