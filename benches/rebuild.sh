#!/usr/bin/env bash
# How long a user waits after changing a model type: a generated crate that depends on this
# checkout declares a BERT-base-sized model with `transformer!` (12 layers, d 768), runs one
# forward pass and one training step; after a first build of everything, its model type is
# edited (d_ff 3072 -> 3000) and `cargo check`, a debug build and a release build are timed.
#
#   bash benches/rebuild.sh            # prints one line per measurement, in seconds
#
# The crate, a clone of this checkout's HEAD (so that edits made meanwhile change nothing) and
# the target directory live in a temporary directory, removed at the end. A build that fails
# prints its error instead of a time.
set -euo pipefail
checkout=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/typeformer-rebuild.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$checkout" "$work/typeformer"
repo="$work/typeformer"
mkdir -p "$work/src"
cp "$repo/rust-toolchain.toml" "$work/"
cat > "$work/Cargo.toml" <<EOF
[package]
name = "user-model"
version = "0.1.0"
edition = "2021"

[dependencies]
typeformer = { path = "$repo" }

# As the README says: dependencies optimised in the dev profile too.
[profile.dev.package."*"]
opt-level = 3
EOF
write_main() {
  cat > "$work/src/main.rs" <<EOF
use typeformer::prelude::*;
use typeformer::train::{backward, Adam, AdamConfig};

typeformer::transformer! {
    /// A BERT-base-sized encoder.
    pub UserBert: EncoderOnly { vocab: 30522, d_model: 768, heads: 12, d_ff: $1, layers: 12, max_len: 512 }
}

fn main() -> typeformer::Result<()> {
    let dev = Cpu::default();
    let model: UserBert = UserBertSpec::build(&dev)?;
    let tokens = Tokens::<30522>::from_sequences(&[vec![101, 2023, 2003, 102]])?;
    let hidden = model.forward(&tokens, None)?;
    println!("{:?}", hidden.shape());
    let mut model = model;
    let mut opt = Adam::new(AdamConfig::default())?;
    let grads = model.alloc_grads();
    let loss = model.forward_traced(&tokens, None, grads)?.square().mean();
    let grads = backward(loss)?;
    opt.update(&mut model, &grads, 1e-4)?;
    Ok(())
}
EOF
}
timed() {
  local what=$1
  shift
  local start end
  start=$(date +%s.%N)
  if ! (cd "$work" && "$@" >"$work/build.log" 2>&1); then
    echo "$what: failed" >&2
    tail -20 "$work/build.log" >&2
    exit 1
  fi
  end=$(date +%s.%N)
  printf '%s: %.1f s\n' "$what" "$(echo "$end - $start" | bc)"
}
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$repo" rev-parse --short HEAD)$(git -C "$checkout" diff --quiet || echo ' (uncommitted changes not measured)'), $(nproc) cores"
write_main 3072
timed "first cargo check (everything)" cargo check
timed "first debug build (everything)" cargo build
timed "first release build (everything)" cargo build --release
write_main 3000
timed "cargo check after editing the model type" cargo check
write_main 2900
timed "debug build after editing the model type" cargo build
write_main 2800
timed "release build after editing the model type" cargo build --release
