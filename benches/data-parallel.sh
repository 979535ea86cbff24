#!/usr/bin/env bash
# Data-parallel scaling on this machine: train-lm (lm-small, the addition task) on 1 rank x 1
# thread against 2 ranks x 1 thread under mpirun, alternating, ROUNDS times. Prints the
# training throughput of each (sequences over the training time rank 0 reports, without start-up
# and the final evaluation) and rank 0's line on the gradient exchange (bytes per step, time in
# the all-reduce).
# Usage: bash benches/data-parallel.sh   (ROUNDS=3 STEPS=100 BATCH=32 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-100} BATCH=${BATCH:-32}
bash scripts/install-mpi.sh
cargo build --release --features mpi --quiet
bin=target/release/typeformer
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RAYON_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(train-lm --task addition --steps "$STEPS" --batch-size "$BATCH" --eval-every 100000 --checkpoint-every 100000)
for round in $(seq "$ROUNDS"); do
    for ranks in 1 2; do
        out="$work/r$round-n$ranks"
        start=$(date +%s.%N)
        if [ "$ranks" = 1 ]; then
            "$bin" "${args[@]}" --out "$out" >"$out.log" 2>&1
        else
            mpirun -n 2 --oversubscribe "$bin" "${args[@]}" --out "$out" >"$out.log" 2>&1
        fi
        seconds=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)")
        steps_line=$(grep -o "step $STEPS/$STEPS ([0-9.]* s)" "$out.log" | tail -1)
        train_s=$(echo "$steps_line" | sed 's/.*(\([0-9.]*\) s)/\1/')
        echo "round $round, $ranks rank(s) x 1 thread: training ${train_s} s for $STEPS steps of $BATCH sequences ($(python3 -c "print(f'{$STEPS*$BATCH/$train_s:.1f}')") sequences/s), process wall ${seconds%.*} s"
        grep "data-parallel:" "$out.log" || true
    done
done
