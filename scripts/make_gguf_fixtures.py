"""Writes tests/fixtures/gguf/: a small GGUF file of every block type typeformer reads, written
and quantized by the `gguf` package (llama.cpp's own Python writer), and the values that
package dequantizes it to, as the reference for tests/gguf.rs.

    python3 -m pip install gguf numpy safetensors
    python3 scripts/make_gguf_fixtures.py
"""

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

out = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(7)

writer = gguf.GGUFWriter(str(out / "small.gguf"), arch="llama")
writer.add_block_count(2)
writer.add_context_length(64)
writer.add_float32("llama.rope.freq_base", 10000.0)
writer.add_bool("tokenizer.ggml.add_bos_token", True)
writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
writer.add_array("tokenizer.ggml.token_type", [3, 3, 1, 1])
writer.add_string("general.name", "typeformer fixture")

expected = {}
# Rows of 64 values: two blocks of 32 per row; 3 rows, so the shape is (3, 64).
for name, qtype in [
    ("f32", Q.F32),
    ("f16", Q.F16),
    ("bf16", Q.BF16),
    ("q8_0", Q.Q8_0),
    ("q4_0", Q.Q4_0),
    ("q4_1", Q.Q4_1),
    ("q5_0", Q.Q5_0),
    ("q5_1", Q.Q5_1),
]:
    values = rng.normal(0.0, 1.0, size=(3, 64)).astype(np.float32)
    values[1, 5] = 0.0  # a zero inside a block
    raw = gguf.quants.quantize(values, qtype)
    writer.add_tensor(f"{name}.weight", raw, raw_dtype=qtype)
    expected[f"{name}.weight"] = gguf.quants.dequantize(raw, qtype).reshape(values.shape).astype(np.float32)

# K-quants: the `gguf` package dequantizes them but does not quantize, so their blocks are
# random bytes with sane f16 scales (d, dmin) put in; 2 rows of 512 values, 2 super-blocks each.
for name, qtype, scale_at in [("q4_k", Q.Q4_K, [0, 2]), ("q5_k", Q.Q5_K, [0, 2]), ("q6_k", Q.Q6_K, [208])]:
    per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(2 * 512 // per_block, block_bytes), dtype=np.uint8)
    for at in scale_at:
        raw[:, at : at + 2] = np.frombuffer(
            rng.uniform(0.001, 0.05, size=raw.shape[0]).astype(np.float16).tobytes(), dtype=np.uint8
        ).reshape(-1, 2)
    raw = raw.reshape(2, -1)
    writer.add_tensor(f"{name}.weight", raw, raw_dtype=qtype)
    expected[f"{name}.weight"] = gguf.quants.dequantize(raw, qtype).reshape(2, 512).astype(np.float32)

writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
save_file(expected, str(out / "small.expected.safetensors"))
print(f"wrote {out}/small.gguf and small.expected.safetensors")

# Slices of SmolLM2-135M-Instruct as the `gguf` package dequantizes them, when the file is
# there (scripts/fetch-smollm2.sh): the embedding row of " Paris" (7042), a Q4_1 row of the
# first query projection and the first RMSNorm weight.
smol = out.parent.parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
if smol.exists():
    reader = gguf.GGUFReader(str(smol))
    tensors = {t.name: t for t in reader.tensors}

    def rows(name):
        t = tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))

    slices = {
        "token_embd.weight.7042": rows("token_embd.weight")[7042].astype(np.float32),
        "blk.0.attn_q.weight.5": rows("blk.0.attn_q.weight")[5].astype(np.float32),
        "blk.0.attn_norm.weight": rows("blk.0.attn_norm.weight")[0].astype(np.float32),
    }
    save_file(slices, str(out / "smollm2.expected.safetensors"))
    print(f"wrote {out}/smollm2.expected.safetensors")
