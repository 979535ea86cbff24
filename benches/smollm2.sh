#!/usr/bin/env bash
# SmolLM2-135M-Instruct from its Q4_1 GGUF file: generation (64 new tokens after a 4-token
# prompt) and prefill (a 126-token prompt, one new token) of `typeformer generate --model`,
# from the file's quantized blocks and from the dequantized f32 copy (--dequantized),
# alternating, ROUNDS times. Prints each run's tokens/s and the ratio of the medians. Then
# batched generation: 8 prompts of 2 to 14 tokens, 64 new tokens each, continued together
# (`--prompts-file`) against the same prompts one after the other, alternating; new tokens per
# second, prompt processing included.
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
# Batched generation.
LIST=$(mktemp)
trap 'rm -f "$LIST"' EXIT
cat > "$LIST" <<'PROMPTS'
Once upon a time
The capital of France is
"def fibonacci(n):\n    if n <"
What is the tallest mountain in the world? The tallest mountain is
The quick brown fox jumps over the lazy dog. The quick brown fox
I like
Rust is a
Hello
PROMPTS
# A stop text that never comes, so that every sequence gets its 64 tokens.
FLAGS=(--model "$MODEL" --temperature 0 --max-new-tokens 64 --stop "§")
together() {
    local line
    line=$(RAYON_NUM_THREADS=2 "$BIN" generate "${FLAGS[@]}" --prompts-file "$LIST" 2>&1 >/dev/null | tail -1)
    sed -E 's/.*\(([0-9.]+) tokens\/s.*/\1/' <<<"$line"
}
one_by_one() {
    local tokens=0 secs=0 line prompt
    while IFS= read -r prompt; do
        prompt=$(python3 -c 'import json,sys; s=sys.argv[1]; print(json.loads(s) if s.startswith("\"") else s, end="")' "$prompt")
        line=$(RAYON_NUM_THREADS=2 "$BIN" generate "${FLAGS[@]}" --prompt "$prompt" 2>&1 >/dev/null | tail -1)
        tokens=$((tokens + $(sed -E 's/^([0-9]+) tokens in.*/\1/' <<<"$line")))
        secs=$(python3 -c "print($secs + $(sed -E 's/.* in ([0-9.]+) s .*/\1/' <<<"$line"))")
    done < "$LIST"
    python3 -c "print(f'{$tokens / $secs:.1f}')"
}
a=(); b=()
for _ in $(seq "$ROUNDS"); do
    a+=("$(together)"); b+=("$(one_by_one)")
done
ma=$(median "${a[@]}"); mb=$(median "${b[@]}")
echo "smollm2-batch-8: together $ma tok/s (${a[*]}), one by one $mb tok/s (${b[*]}), ratio $(python3 -c "print(f'{$ma / $mb:.2f}')")"
