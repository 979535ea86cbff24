#!/usr/bin/env bash
# The whole GPU check in two halves, for a GPU machine that has nothing but the repository (no
# network, no cargo, no CUDA toolkit; only the NVIDIA driver and the CUDA 13 libraries).
#
#   bash scripts/gpu-check.sh prepare [BUNDLE]   # here, with network: toolchain, build, bundle
#   bash scripts/gpu-check.sh run [BUNDLE]       # there: GPU tests, GPU benches, a CLI training run
#
# BUNDLE defaults to .gpu-bundle in the repository (ignored by git, ~30 MB); copy it to the GPU
# machine with the repository (for the device tool: carry [".gpu-bundle"]).
#
# prepare: sets up the CUDA 13.0 toolchain from PyPI (scripts/cuda-toolchain.sh), builds in release
#   with `--features cuda` the GPU tests (tests/cuda.rs), the GPU benches (benches/gpu.rs) and the
#   command-line tool, and copies them, stripped, into BUNDLE with the headers NVRTC needs at run
#   time (dfdx compiles a few kernels on the device: cuda_fp16.h and dfdx's .cuh files) and a
#   MANIFEST. CUDA_COMPUTE_CAP picks the GPU architecture (default 90: H100/H200); the kernels'
#   PTX runs on that architecture and newer. CARGO_TARGET_DIR is honoured (default: target).
#
# run: finds the driver (libcuda.so.1, nvidia-smi) and the libraries the binaries link
#   (libcublas.so.13, libcublasLt.so.13, libnvrtc.so.13, libcurand.so.10: from $CUDA_LIBS, a
#   CUDA installation, or any Python environment's nvidia-* wheels, e.g. PyTorch's), then runs
#     1. the GPU-vs-CPU tests with TYPEFORMER_TEST_CUDA=1 (a GPU is required, not optional);
#     2. the GPU benchmarks (SECONDS_PER_RUN each, default 3);
#     3. `typeformer train --device cuda` with the README's defaults (1200 steps, reverse task).
#   It writes a log to $OUT/gpu-check.log and the benchmark lines to $OUT/gpu-bench.txt when OUT is
#   set. Without a GPU it stops at once: "no CUDA device", exit status 2. Each part has a time limit
#   (the whole stays under 8 minutes); the status is non-zero if any part failed.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
mode="${1:-}"
bundle="${2:-$repo/.gpu-bundle}"

die() {
    echo "gpu-check: error: $*" >&2
    exit 1
}

prepare() {
    command -v cargo >/dev/null || die "cargo is needed to prepare the bundle"
    command -v strip >/dev/null || die "strip (binutils) is needed"
    local start=$SECONDS
    # shellcheck disable=SC1091
    bash "$repo/scripts/cuda-toolchain.sh" >/dev/null
    # shellcheck disable=SC1091
    source "$repo/.cuda-toolchain/env.sh"
    echo "gpu-check: toolchain ready ($((SECONDS - start)) s); building for sm_$CUDA_COMPUTE_CAP" >&2

    local json
    json="$(mktemp)"
    trap 'rm -f "$json"' RETURN
    (cd "$repo" && cargo build --release --features cuda --test cuda --bench gpu --bin typeformer \
        --message-format=json-render-diagnostics >"$json") || die "the cuda build failed (see above)"
    echo "gpu-check: built ($((SECONDS - start)) s)" >&2

    # The executables, by target name, from cargo's messages.
    local paths
    paths="$(python3 - "$json" <<'PY'
import json, sys
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = m["target"]["kind"][0]
        name = m["target"]["name"]
        key = {("test", "cuda"): "gpu-tests", ("bench", "gpu"): "gpu-bench", ("bin", "typeformer"): "typeformer"}.get((kind, name))
        if key:
            found[key] = m["executable"]
for key in ("gpu-tests", "gpu-bench", "typeformer"):
    if key not in found:
        sys.exit(f"no executable for {key} in cargo's output")
    print(key, found[key])
PY
)" || die "could not find the built executables"

    rm -rf "$bundle.partial"
    mkdir -p "$bundle.partial/bin" "$bundle.partial/nvrtc-include"
    local key exe
    while read -r key exe; do
        strip -o "$bundle.partial/bin/$key" "$exe"
    done <<<"$paths"

    # NVRTC headers: dfdx compiles its reshape/concat/stack/dtype kernels on the device with
    # `#include "cuda_fp16.h"` and dfdx's own .cuh files, searching paths of this machine that the
    # GPU machine lacks; NVRTC also searches the working directory, where `run` starts the binaries.
    cp "$CUDA_ROOT/include/cuda_fp16.h" "$CUDA_ROOT/include/cuda_fp16.hpp" "$bundle.partial/nvrtc-include/"
    local dfdx_src
    dfdx_src="$(cd "$repo" && cargo metadata --format-version 1 --features cuda 2>/dev/null | python3 -c '
import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "dfdx":
        print(os.path.dirname(p["manifest_path"]))
        break
')" || true
    [ -d "$dfdx_src/src" ] || die "could not find dfdx's sources (for its .cuh headers)"
    find "$dfdx_src/src" -name '*.cuh' -exec cp {} "$bundle.partial/nvrtc-include/" \;

    {
        echo "commit: $(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$repo" && git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
        echo "compute-cap: $CUDA_COMPUTE_CAP"
        echo "nvcc: $(nvcc --version | sed -n 's/.*release \([0-9.]*\), \(V[0-9.]*\).*/\1 \2/p')"
        echo "dfdx: $dfdx_src"
        echo "needed: $(for f in "$bundle.partial"/bin/*; do readelf -d "$f" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'; done | sort -u | tr '\n' ' ')"
    } >"$bundle.partial/MANIFEST"
    rm -rf "$bundle"
    mv "$bundle.partial" "$bundle"

    local size
    size="$(du -sm "$bundle" | cut -f1)"
    [ "$size" -lt 60 ] || die "the bundle is $size MiB; the device tool carries at most 64 MiB in all"
    cat "$bundle/MANIFEST" >&2
    ls -la "$bundle/bin" >&2
    echo "gpu-check: bundle ready in $bundle ($size MiB, $((SECONDS - start)) s); on the GPU machine: bash scripts/gpu-check.sh run" >&2
}

# Directories holding `lib`, from $CUDA_LIBS, CUDA installations and Python environments' NVIDIA
# wheels; as a last resort a search of the whole file system.
find_lib() {
    local lib="$1" d
    for d in ${CUDA_LIBS//:/ } /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib /usr/local/cuda-13*/lib64 \
        /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib \
        /usr/local/lib/python3*/dist-packages/nvidia/*/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
        if [ -e "$d/$lib" ]; then
            echo "$d"
            return 0
        fi
    done
    local hit
    hit="$(timeout 60 find / -xdev -name "$lib" -not -path '*/proc/*' 2>/dev/null | head -1 || true)"
    [ -n "$hit" ] && dirname "$hit"
}

run() {
    local start=$SECONDS
    local out="${OUT:-}"
    local log=/dev/null
    if [ -n "$out" ]; then
        mkdir -p "$out"
        log="$out/gpu-check.log"
        : >"$log"
    fi
    say() { echo "$*" | tee -a "$log" >&2; }

    [ -f "$bundle/MANIFEST" ] || die "no bundle at $bundle: run \`bash scripts/gpu-check.sh prepare\` on a machine with network first, and bring .gpu-bundle along (device tool: carry [\".gpu-bundle\"])"
    say "== gpu-check run, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    sed 's/^/bundle /' "$bundle/MANIFEST" | tee -a "$log" >&2

    # The driver.
    if ! command -v nvidia-smi >/dev/null; then
        say "gpu-check: no CUDA device: nvidia-smi is not installed (no NVIDIA driver on this machine)"
        exit 2
    fi
    local gpus
    if ! gpus="$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1)" || [ -z "$gpus" ]; then
        say "gpu-check: no CUDA device: nvidia-smi says: $gpus"
        exit 2
    fi
    say "gpu: $gpus"
    local want cap
    want="$(sed -n 's/^compute-cap: //p' "$bundle/MANIFEST")"
    cap="$(echo "$gpus" | head -1 | cut -d, -f3 | tr -d ' .')"
    if [ -n "$cap" ] && [ -n "$want" ] && [ "$cap" -lt "$want" ]; then
        say "gpu-check: the bundle's kernels are for sm_$want, this GPU is sm_$cap: prepare again with CUDA_COMPUTE_CAP=$cap"
        exit 1
    fi

    # The libraries the binaries link (the driver's libcuda.so.1 included).
    local dirs="" lib dir
    for lib in $(sed -n 's/^needed: //p' "$bundle/MANIFEST"); do
        case "$lib" in libc.so* | libm.so* | libgcc_s.so* | libpthread.so* | libdl.so* | librt.so* | libstdc++.so* | ld-linux*) continue ;; esac
        if ldconfig -p 2>/dev/null | grep -q "[[:space:]]$lib "; then
            continue
        fi
        dir="$(find_lib "$lib")" || true
        if [ -z "$dir" ]; then
            if [ "$lib" = libcuda.so.1 ]; then
                say "gpu-check: no CUDA device: the NVIDIA driver library libcuda.so.1 is not installed"
                exit 2
            fi
            say "gpu-check: $lib not found (set CUDA_LIBS to the directory that holds it, e.g. a CUDA 13 toolkit's lib64 or a Python environment's site-packages/nvidia/cu13/lib)"
            exit 1
        fi
        case ":$dirs:" in *":$dir:"*) ;; *) dirs="${dirs:+$dirs:}$dir" ;; esac
    done
    # NVRTC loads its builtins library at run time; it usually sits beside libnvrtc.
    if ! ldconfig -p 2>/dev/null | grep -q "[[:space:]]libnvrtc-builtins.so.13.0 " && dir="$(find_lib libnvrtc-builtins.so.13.0)" && [ -n "$dir" ]; then
        case ":$dirs:" in *":$dir:"*) ;; *) dirs="${dirs:+$dirs:}$dir" ;; esac
    fi
    export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    local missing
    missing="$(for f in "$bundle"/bin/*; do ldd "$f" | grep 'not found' || true; done | sort -u)"
    [ -z "$missing" ] || {
        say "gpu-check: the binaries still miss libraries: $missing"
        exit 1
    }

    # NVRTC finds cuda_fp16.h and dfdx's headers in the working directory.
    cd "$bundle/nvrtc-include"
    local failed=0 t
    say ""
    say "== 1/3 GPU-vs-CPU tests (TYPEFORMER_TEST_CUDA=1)"
    t=$SECONDS
    TYPEFORMER_TEST_CUDA=1 timeout 240 "$bundle/bin/gpu-tests" --test-threads 1 2>&1 | tee -a "$log" || {
        say "gpu-check: the GPU tests FAILED (status ${PIPESTATUS[0]})"
        failed=1
    }
    say "(tests: $((SECONDS - t)) s)"

    say ""
    say "== 2/3 GPU benchmarks (SECONDS_PER_RUN=${SECONDS_PER_RUN:-3})"
    t=$SECONDS
    local bench_out
    bench_out="$(mktemp)"
    timeout 150 "$bundle/bin/gpu-bench" 2>&1 | tee "$bench_out" | tee -a "$log" || {
        say "gpu-check: the GPU benchmarks FAILED (status ${PIPESTATUS[0]})"
        failed=1
    }
    [ -z "$out" ] || { echo "# $(date -u +%Y-%m-%d), $(echo "$gpus" | head -1)"; grep -v '^#' "$bench_out" || true; } >"$out/gpu-bench.txt"
    say "(benchmarks: $((SECONDS - t)) s)"

    say ""
    say "== 3/3 typeformer train --device cuda (the README's default run)"
    t=$SECONDS
    local run_dir
    run_dir="$(mktemp -d)"
    timeout 200 "$bundle/bin/typeformer" train --device cuda --out "$run_dir" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 25 | tee -a "$log" || {
        say "gpu-check: the training run FAILED (status ${PIPESTATUS[0]})"
        failed=1
    }
    say "(training run: $((SECONDS - t)) s)"

    say ""
    say "== gpu-check: $([ "$failed" = 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
    return "$failed"
}

case "$mode" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: bash scripts/gpu-check.sh prepare|run [BUNDLE]   (see the top of this script)" >&2
    exit 64
    ;;
esac
