#!/usr/bin/env bash
# Time to first output, as a new user meets it: a fresh clone, an empty cargo cache (crates
# downloaded from crates.io), then the README's `cargo run --release`. Prints when the build
# finished, when the first training step came, and when the run ended, in seconds from the start.
#
#   bash benches/first-run.sh [REV]        # REV: what to clone (default HEAD of this checkout)
#
# Writes nothing outside a temporary directory, which it removes. The toolchain is the one
# rust-toolchain.toml pins (installed by rustup if missing, and that time is counted too).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:-HEAD}
work=$(mktemp -d /tmp/typeformer-first-run.XXXXXX)
trap 'rm -rf "$work"' EXIT

git clone -q "$repo" "$work/clone"
git -C "$work/clone" checkout -q "$rev"
export CARGO_HOME="$work/cargo-home" # empty: every crate is downloaded and compiled
mkdir -p "$CARGO_HOME"
cd "$work/clone"
echo "first run of $(git rev-parse --short HEAD) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"

# On a pipe the training prints a line at step 1 (and every tenth of the run) instead of a bar.
python3 - <<'PY'
import subprocess, sys, time
start = time.monotonic()
marks = {}
proc = subprocess.Popen(["cargo", "run", "--release"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
for line in proc.stdout:
    t = time.monotonic() - start
    if "Finished `release`" in line and "build" not in marks:
        marks["build"] = t
    if "step 1/" in line and "first step" not in marks:
        marks["first step"] = t
    if line.startswith("exact match"):
        print(line.rstrip())
proc.wait()
marks["end"] = time.monotonic() - start
for name, t in marks.items():
    print(f"{name}: {t:.1f} s")
sys.exit(proc.returncode)
PY
