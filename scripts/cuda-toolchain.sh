#!/usr/bin/env bash
# Sets up a CUDA 13.0 build toolchain from PyPI for `cargo build --features cuda`, for machines
# without a CUDA installation (no GPU needed to build; running needs a GPU and its driver).
#
#   eval "$(bash scripts/cuda-toolchain.sh)"      # or: source .cuda-toolchain/env.sh afterwards
#   cargo build --release --features cuda
#
# What it does, into DIR (default: .cuda-toolchain in the repository, ignored by git):
#   - pip-installs NVIDIA's CUDA 13.0 wheels (pinned below) into DIR/site-packages: nvcc, cicc,
#     ptxas, the headers (CUDA runtime, CRT, CCCL), cuBLAS, NVRTC and cuRAND;
#   - makes DIR/cuda a CUDA_ROOT that cudarc's and dfdx's build scripts accept: include/cuda.h,
#     bin/nvcc, lib64/ with the unversioned names the linker wants (-lcublas -lcublasLt -lnvrtc
#     -lcurand), and lib64/stubs/libcuda.so, a link-time stub of the driver (soname libcuda.so.1,
#     as NVIDIA's toolkit ships one) generated with gcc from the names cudarc binds. The stub is
#     for linking only: at run time the driver's own libcuda.so.1 is used (if the stub is ever
#     loaded, every call fails with CUDA_ERROR_STUB_LIBRARY);
#   - adds DIR/shim/nvidia-smi, which dfdx's build script calls for the GPU's compute capability:
#     it answers $CUDA_COMPUTE_CAP (default 90: H100/H200). It comes after PATH, so a real
#     nvidia-smi wins; CUDA_COMPUTE_CAP overrides either;
#   - checks the result (nvcc compiles a kernel to PTX; a C program links against all five
#     libraries), writes DIR/env.sh and prints its `export` lines on stdout (messages go to
#     stderr).
#
# Idempotent: a second run only re-checks. Needs python3 with pip, gcc, and network to PyPI.
# The versions are pinned to CUDA 13.0 on purpose: PTX from a newer nvcc (13.1+) cannot be
# loaded by a 13.0 driver (R580), while 13.0 PTX runs on every newer driver.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$repo/.cuda-toolchain}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.0.0.19
    nvidia-cuda-nvrtc==13.0.88
    nvidia-curand==10.4.0.35
)

say() { echo "cuda-toolchain: $*" >&2; }
die() {
    echo "cuda-toolchain: error: $*" >&2
    exit 1
}

command -v python3 >/dev/null || die "python3 is needed (to pip-install NVIDIA's CUDA wheels)"
python3 -m pip --version >/dev/null 2>&1 || die "pip is needed: python3 -m pip does not run (e.g. apt-get install python3-pip)"
command -v gcc >/dev/null || die "gcc is needed (nvcc's host compiler, and to build the link-time driver stub)"

# 1. The wheels.
site="$dir/site-packages"
stamp="$dir/.installed"
want="$(printf '%s\n' "${wheels[@]}")"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$site/nvidia/cu13/bin/nvcc" ]; then
    say "CUDA 13.0 wheels already in $site"
else
    say "installing ${#wheels[@]} CUDA 13.0 wheels from PyPI into $site (about 1.2 GB unpacked)"
    rm -rf "$site" "$stamp"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$site" "${wheels[@]}" >&2 ||
        die "pip could not install the CUDA wheels (is PyPI reachable?): ${wheels[*]}"
    echo "$want" >"$stamp"
fi

cu="$site/nvidia/cu13"
for f in bin/nvcc bin/ptxas nvvm/bin/cicc include/cuda.h include/cuda_fp16.h include/cuda_runtime.h \
    lib/libcublas.so.13 lib/libcublasLt.so.13 lib/libnvrtc.so.13 lib/libcurand.so.10; do
    [ -e "$cu/$f" ] || die "the wheels did not provide $cu/$f (the wheel layout changed?); delete $dir and rerun"
done

# 2. CUDA_ROOT: include, bin, nvvm from the wheels; lib64 with unversioned names; the stub.
root="$dir/cuda"
mkdir -p "$root/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$cu/$d" "$root/$d"; done
for lib in libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libnvrtc-builtins.so.13.0 libcurand.so.10 libcudart.so.13; do
    [ -e "$cu/lib/$lib" ] || continue
    ln -sfn "$cu/lib/$lib" "$root/lib64/$lib"
done
ln -sfn libcublas.so.13 "$root/lib64/libcublas.so"
ln -sfn libcublasLt.so.13 "$root/lib64/libcublasLt.so"
ln -sfn libnvrtc.so.13 "$root/lib64/libnvrtc.so"
ln -sfn libcurand.so.10 "$root/lib64/libcurand.so"
ln -sfn libcudart.so.13 "$root/lib64/libcudart.so"

# The driver stub defines every function cuda.h declares (after its _v2 renames) and every one
# cudarc's bindings name (some, e.g. cuCtxCreate_v2, are no longer in CUDA 13's cuda.h but are
# still exported by the driver).
stub="$root/lib64/stubs/libcuda.so"
if [ ! -f "$stub" ] || [ "$0" -nt "$stub" ]; then
    names="$dir/stub-names.txt"
    gcc -E -P -I"$root/include" "$root/include/cuda.h" | grep -oE '\bcu[A-Za-z0-9_]+ *\(' | sed 's/ *($//' >"$names" ||
        die "could not preprocess $root/include/cuda.h"
    cudarc_version="$(awk '/^name = "cudarc"$/ {getline; gsub(/[^0-9.]/, ""); print}' "$repo/Cargo.lock" | head -1)"
    sys=""
    if [ -n "$cudarc_version" ]; then
        for cand in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$cudarc_version"/src/driver/sys.rs; do
            [ -f "$cand" ] && sys="$cand"
        done
        if [ -z "$sys" ] && command -v cargo >/dev/null; then
            say "fetching the crates' sources (cargo fetch) to read cudarc $cudarc_version's driver bindings"
            (cd "$repo" && cargo fetch >&2) || die "cargo fetch failed"
            for cand in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$cudarc_version"/src/driver/sys.rs; do
                [ -f "$cand" ] && sys="$cand"
            done
        fi
    fi
    if [ -n "$sys" ]; then
        grep -oE 'pub fn cu[A-Za-z0-9_]+' "$sys" | sed 's/^pub fn //' >>"$names"
    else
        say "warning: cudarc's driver bindings not found; the stub has only cuda.h's names (a link may miss some)"
    fi
    {
        echo '/* Link-time stub of the CUDA driver (libcuda.so.1), generated by scripts/cuda-toolchain.sh. */'
        echo '/* Never load it at run time: every function returns CUDA_ERROR_STUB_LIBRARY (34). */'
        echo 'static const char stub_msg[] = "CUDA_ERROR_STUB_LIBRARY: the link-time stub libcuda.so was loaded instead of the NVIDIA driver";'
        echo 'int cuGetErrorString(int e, const char **s) { (void)e; *s = stub_msg; return 0; }'
        echo 'int cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_ERROR_STUB_LIBRARY"; return 0; }'
        sort -u "$names" | grep -vxE 'cuGetErrorString|cuGetErrorName' | sed 's/.*/int &(void) { return 34; }/'
    } >"$dir/libcuda-stub.c"
    gcc -shared -fPIC -O1 -w -Wl,-soname,libcuda.so.1 -o "$stub.tmp" "$dir/libcuda-stub.c" ||
        die "gcc could not build the driver stub from $dir/libcuda-stub.c"
    mv "$stub.tmp" "$stub"
    say "driver stub: $stub ($(sort -u "$names" | wc -l) functions, soname libcuda.so.1, link time only)"
fi

# 3. nvidia-smi shim for dfdx's build script (which asks it for the compute capability).
mkdir -p "$dir/shim"
cat >"$dir/shim/nvidia-smi" <<'SH'
#!/bin/sh
# Stand-in for nvidia-smi on a build machine without a GPU (from scripts/cuda-toolchain.sh):
# answers `--query-gpu=compute_cap --format=csv` with $CUDA_COMPUTE_CAP (default 90).
case "$*" in
*compute_cap*)
    echo compute_cap
    echo "${CUDA_COMPUTE_CAP:-90}"
    ;;
*)
    echo "nvidia-smi (typeformer build shim): no GPU on this machine; only --query-gpu=compute_cap is answered" >&2
    exit 9
    ;;
esac
SH
chmod +x "$dir/shim/nvidia-smi"

# The default compute capability: the real GPU's when nvidia-smi can tell, else 90.
cap=90
if real_smi="$(command -v nvidia-smi)" && [ "$real_smi" != "$dir/shim/nvidia-smi" ]; then
    if c="$("$real_smi" --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')" && [ -n "$c" ]; then
        cap="$c"
    fi
fi

cat >"$dir/env.sh" <<EOF
# Generated by scripts/cuda-toolchain.sh: the environment for \`cargo build --features cuda\`.
export CUDA_ROOT="$root"
export PATH="$root/bin:\$PATH:$dir/shim"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-$cap}"
# Run time (tests, benches, the CLI on a GPU machine): cuBLAS, NVRTC and cuRAND from the wheels;
# libcuda.so.1 comes from the NVIDIA driver. Never put lib64/stubs here.
export LD_LIBRARY_PATH="$root/lib64\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF

# 4. Check: nvcc makes PTX, and a program links against the five libraries.
check="$(mktemp -d)"
trap 'rm -rf "$check"' EXIT
(
    # shellcheck disable=SC1091
    source "$dir/env.sh"
    printf '#include "cuda_fp16.h"\nextern "C" __global__ void k(__half *x) { x[threadIdx.x] = __float2half(1.0f); }\n' >"$check/k.cu"
    nvcc --gpu-architecture="sm_$CUDA_COMPUTE_CAP" --ptx -o "$check/k.ptx" "$check/k.cu" >&2 ||
        die "nvcc could not compile a test kernel for sm_$CUDA_COMPUTE_CAP (nvcc --list-gpu-code lists the targets)"
    nvidia-smi --query-gpu=compute_cap --format=csv >/dev/null || die "nvidia-smi (or its shim) does not answer"
    printf 'int cuInit(unsigned); int cublasCreate_v2(void *); int nvrtcVersion(int *, int *); int curandCreateGenerator(void *, int); int cublasLtCreate(void *);\nint main(void) { return cuInit(0) + cublasCreate_v2(0) + nvrtcVersion(0, 0) + curandCreateGenerator(0, 0) + cublasLtCreate(0); }\n' >"$check/l.c"
    gcc "$check/l.c" -o "$check/l" -L"$root/lib64" -L"$root/lib64/stubs" -lcuda -lcublas -lcublasLt -lnvrtc -lcurand >&2 ||
        die "a test program does not link against $root/lib64 (-lcuda -lcublas -lcublasLt -lnvrtc -lcurand)"
) || exit 1
say "ok: nvcc $("$root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_ROOT=$root, compute capability sm_$cap (set CUDA_COMPUTE_CAP to change it)"

grep '^export' "$dir/env.sh"
