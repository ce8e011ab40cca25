#!/usr/bin/env bash
# The speed comparisons on a CUDA GPU: exact patching vs nnsight (bench_patching.py), causal head gating vs
# nam-causal-head-gating (bench_gating_peer.py), probing vs honest_llama's recipe (bench_probing.py) and the
# whole 33-detector scan (bench_scan.py --detectors all), each with --device cuda. Each writes its own
# "-cuda" section under bench/results/; this script then adds a dated section (bench/results/gpu-<UTC time>.md:
# one row per step with its command, exit status and seconds) and rebuilds bench/RESULTS.md.
#
#   bash bench/gpu.sh                 # PYTHON=... to choose the interpreter (default: python)
#   GPU_STEPS="patching probing" bash bench/gpu.sh     # a subset: patching gating probing scan
#
# Without a CUDA device it says so and exits 0 (nothing is written). The peers come from the bench extra
# (pip install -e .[bench]); a missing peer is reported in its section, never faked.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "bench/gpu.sh: skipped: no CUDA device (torch.cuda.is_available() is False on this machine)"
    exit 0
fi

STEPS="${GPU_STEPS:-patching gating probing scan}"
STAMP="$(date -u +%Y-%m-%dT%H%MZ)"
ROWS=()
FAILED=0
for step in $STEPS; do
    case "$step" in
        patching) cmd=("$PY" bench/bench_patching.py --device cuda --threads 4) ;;
        gating)   cmd=("$PY" bench/bench_gating_peer.py --device cuda --threads 4) ;;
        probing)  cmd=("$PY" bench/bench_probing.py --device cuda --threads 4) ;;
        scan)     cmd=("$PY" bench/bench_scan.py --device cuda --threads 4 --detectors all --section scan-cuda
                       --title "the whole 33-detector battery on CUDA vs its plain forward passes") ;;
        *) echo "bench/gpu.sh: unknown step '$step' (patching gating probing scan)"; exit 2 ;;
    esac
    echo "bench/gpu.sh: $step: ${cmd[*]}"
    start=$(date +%s)
    "${cmd[@]}"
    rc=$?
    secs=$(( $(date +%s) - start ))
    [ "$rc" -eq 0 ] || FAILED=1
    ROWS+=("$step|${cmd[*]}|$rc|$secs")
done

"$PY" bench/gpu_summary.py "$STAMP" "${ROWS[@]}"
exit "$FAILED"
