"""Writes tests/fixtures/llama/tiny-hf/: a randomly initialised Hugging Face LlamaForCausalLM
small enough to commit (config.json, model.safetensors), with the logits and greedy
continuation transformers computes for it (reference.json), for tests/llama.rs: a Llama-family
checkpoint in Hugging Face's layout, untied, with grouped-query attention.

    python3 -m pip install torch transformers safetensors
    python3 scripts/make_tiny_llama_fixture.py
"""

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "llama" / "tiny-hf"
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(11)
config = LlamaConfig(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=4,
    max_position_embeddings=32,
    rope_theta=5000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
model = LlamaForCausalLM(config).eval()
with torch.no_grad():
    # Norm weights away from their initial ones, so that a norm read from the wrong tensor shows.
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
model.save_pretrained(out, safe_serialization=True)
ids = [1, 5, 9, 33, 7, 60, 2, 14]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
    greedy = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=None)[0, len(ids):]
(out / "reference.json").write_text(
    json.dumps({"ids": ids, "logits": logits.flatten().tolist(), "greedy": greedy.tolist()})
)
for extra in ["generation_config.json"]:
    (out / extra).unlink(missing_ok=True)
print(f"wrote {out}: {sorted(p.name for p in out.iterdir())}")
