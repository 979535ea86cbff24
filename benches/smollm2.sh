#!/usr/bin/env bash
# SmolLM2-135M-Instruct from its Q4_1 GGUF file: generation (64 new tokens after a 4-token
# prompt) and prefill (a 126-token prompt, one new token) of `typeformer generate --model`,
# from the file's quantized blocks and from the dequantized f32 copy (--dequantized),
# alternating, ROUNDS times. Prints each run's tokens/s and the ratio of the medians.
#
#   bash scripts/fetch-smollm2.sh && cargo build --release && bash benches/smollm2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
BIN=target/release/typeformer
[ -f "$MODEL" ] || { echo "no $MODEL: run scripts/fetch-smollm2.sh" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release" >&2; exit 1; }
LONG=$(printf 'the quick brown fox jumps over the lazy dog %.0s' $(seq 14))
# tokens/s of one run: $1 prompt, $2 new tokens, $3 extra flag. Prefill is counted in
# prompt tokens per second of the whole call.
rate() {
    local line secs
    line=$("$BIN" generate --model "$MODEL" --prompt "$1" --temperature 0 --max-new-tokens "$2" $3 2>&1 >/dev/null | tail -1)
    secs=$(sed -E 's/.* in ([0-9.]+) s .*/\1/' <<<"$line")
    local prompt_tokens
    prompt_tokens=$(sed -E 's/.*prompt of ([0-9]+) tokens.*/\1/' <<<"$line")
    if [ "$2" = 1 ]; then python3 -c "print(f'{$prompt_tokens / $secs:.1f}')"; else python3 -c "print(f'{$2 / $secs:.1f}')"; fi
}
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "$@"; }
echo "# $(date -u +%FT%RZ), $(git rev-parse --short HEAD), $(nproc) cores: $MODEL"
for job in decode prefill; do
    q=(); f=()
    for _ in $(seq "$ROUNDS"); do
        if [ $job = decode ]; then
            q+=("$(rate 'Once upon a time' 64 '')"); f+=("$(rate 'Once upon a time' 64 --dequantized)")
        else
            q+=("$(rate "$LONG" 1 '')"); f+=("$(rate "$LONG" 1 --dequantized)")
        fi
    done
    mq=$(median "${q[@]}"); mf=$(median "${f[@]}")
    echo "smollm2-$job: quantized ${q[*]} tok/s, f32 copy ${f[*]} tok/s; medians $mq / $mf, ratio $(python3 -c "print(f'{$mq / $mf:.2f}')")"
done
