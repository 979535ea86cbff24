"""Writes tests/fixtures/llama/smollm2.json: what Hugging Face transformers computes from
SmolLM2-135M-Instruct's GGUF file (dequantized to fp32 by the `gguf` package), the reference
for tests/llama.rs. Needs the file (scripts/fetch-smollm2.sh) and

    python3 -m pip install torch transformers accelerate gguf sentencepiece
    python3 scripts/make_llama_fixtures.py
"""

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

root = Path(__file__).resolve().parent.parent
models = root / "models"
name = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(models, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(models, gguf_file=name, dtype=torch.float32).eval()

# Every 97th logit plus the top 8, at the first, middle and last positions of each prompt.
STRIDE = 97
chat = tok.apply_chat_template(
    [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
)
prompts = [
    "The capital of France is",
    "def fibonacci(n):\n    if n <",
    "Once upon a time, in a village far away,",
    chat,
]
cases = []
for text in prompts:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        greedy = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    positions = sorted({0, len(ids) // 2, len(ids) - 1})
    cases.append(
        {
            "text": text,
            "ids": ids,
            "positions": positions,
            "logits": [logits[p, ::STRIDE].tolist() for p in positions],
            "top": [torch.topk(logits[p], 8).indices.tolist() for p in positions],
            "greedy": greedy,
        }
    )

tokenizer_texts = [
    "Hello, world!",
    "  two  spaces,\tand a tab\n\nand newlines\n",
    "Unicode: café, naïve, 東京, emoji 🎉, Ελληνικά",
    "digits 1234567890 and 3.14159",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}",
    "<|im_start|>user\nHi<|im_end|>\n",
]
tokenizer = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in tokenizer_texts]

out = root / "tests" / "fixtures" / "llama" / "smollm2.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"stride": STRIDE, "cases": cases, "tokenizer": tokenizer}, indent=None))
print(f"wrote {out}")
for c in cases:
    print(repr(c["text"][:40]), c["ids"][:8], "->", c["greedy"], repr(tok.decode(c["greedy"])))
