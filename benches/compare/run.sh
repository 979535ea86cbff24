#!/usr/bin/env bash
# Runs each workload in typeformer and in PyTorch (2 threads) on this machine, alternating them
# ROUNDS times, and prints the median throughput of each with the ratio:
#   <workload>: typeformer <x> tok/s, pytorch <y> tok/s, ratio <x/y>
# PyTorch goes into its own virtualenv (benches/compare/.venv, from PyPI; or set PYTHON to a
# python that has torch and transformers). all-MiniLM-L6-v2 comes from scripts/fetch-minilm.sh.
# Usage: bash benches/compare/run.sh [workload ...]   (default: all); SECONDS_PER_RUN, ROUNDS.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs="${SECONDS_PER_RUN:-3}"
rounds="${ROUNDS:-3}"
if [ -z "${PYTHON:-}" ]; then
    venv=benches/compare/.venv
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet torch transformers
    fi
    PYTHON="$venv/bin/python"
fi
bash scripts/fetch-minilm.sh >/dev/null
cargo bench --bench compare --no-run --quiet 2>/dev/null
bench="$(ls -t target/release/deps/compare-* | grep -v '\.d$' | head -1)"

workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || mapfile -t workloads < <("$bench" list)

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "# $(date -u +%Y-%m-%d), $(nproc) cores, ${rounds} alternating rounds of ${secs} s each, median tok/s"
for w in "${workloads[@]}"; do
    ours=(); theirs=()
    for _ in $(seq "$rounds"); do
        ours+=("$("$bench" "$w" "$secs" | awk '{print $2}')")
        theirs+=("$(OMP_NUM_THREADS=2 "$PYTHON" benches/compare/torch_workloads.py "$w" "$secs" 2>/dev/null | awk '{print $2}')")
    done
    x="$(printf '%s\n' "${ours[@]}" | median)"
    y="$(printf '%s\n' "${theirs[@]}" | median)"
    awk -v w="$w" -v x="$x" -v y="$y" 'BEGIN {printf "%s: typeformer %.0f tok/s, pytorch %.0f tok/s, ratio %.2f\n", w, x, y, x / y}'
done
