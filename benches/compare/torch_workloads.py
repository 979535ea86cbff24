"""PyTorch's side of benches/compare/run.sh: the same workloads as workloads.rs, on 2 threads.

Usage: python torch_workloads.py <workload> [seconds]; prints "<workload> <tokens per second>".
A `-packed` workload is typeformer's inference through `PackedWeights`; PyTorch runs the plain one.
"""

import math
import os
import sys
import time

import torch
from torch import nn

torch.set_num_threads(2)
torch.manual_seed(0)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def throughput(tokens, seconds, f):
    f()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or calls < 3:
        f()
        calls += 1
    return tokens * calls / (time.perf_counter() - start)


def encoder(layers=6):
    layer = nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def gpt2(vocab=256):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab, n_positions=256, n_embd=128, n_layer=4, n_head=4, n_inner=512,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


class Gpt(nn.Module):
    """The training workload: d 128, 4 heads, 4 pre-LN GELU blocks, d_ff 512, vocab 256, tied."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(256, 128)
        self.pos = nn.Embedding(256, 128)
        layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(128)

    def forward(self, ids):
        s = ids.shape[1]
        x = self.embed(ids) + self.pos(torch.arange(s))
        mask = nn.Transformer.generate_square_subsequent_mask(s)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.norm(x) @ self.embed.weight.T


def run(workload, seconds):
    b, s = 1, 128
    x = torch.randn(b, s, 512)
    if workload == "attention":
        mha = nn.MultiheadAttention(512, 8, batch_first=True).eval()
        with torch.inference_mode():
            return throughput(b * s, seconds, lambda: mha(x, x, x, need_weights=False))
    if workload == "encoder-layer":
        layer = nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True).eval()
        with torch.inference_mode():
            return throughput(b * s, seconds, lambda: layer(x))
    if workload == "encoder-forward":
        model = encoder().eval()
        with torch.inference_mode():
            return throughput(b * s, seconds, lambda: model(x))
    if workload == "encoder-forward-backward":
        model = encoder().train()

        def step():
            model.zero_grad(set_to_none=False)
            model(x).sum().backward()

        return throughput(b * s, seconds, step)
    if workload == "gpt-train-step":
        model = Gpt()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        batch, seq = 8, 128
        ids = torch.tensor([[(i * 31 + t * 7) % 256 for t in range(seq + 1)] for i in range(batch)])
        inputs, labels = ids[:, :seq], ids[:, 1:]

        def step():
            logits = model(inputs)
            loss = nn.functional.cross_entropy(logits.reshape(-1, 256), labels.reshape(-1))
            opt.zero_grad(set_to_none=False)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        return throughput(batch * seq, seconds, step)
    if workload in ("generate-cached", "generate-recompute"):
        model = gpt2().eval()
        prompt = torch.tensor([[(i * 13) % 256 for i in range(64)]])
        cached = workload == "generate-cached"

        def generate():
            ids, past, nxt = prompt, None, prompt
            for _ in range(64):
                if cached:
                    out = model(nxt, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                else:
                    out = model(ids, use_cache=False)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, token], dim=1)
                nxt = token

        with torch.inference_mode():
            return throughput(64, seconds, generate)
    if workload == "minilm-embed":
        from transformers import AutoTokenizer, BertModel

        path = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = BertModel.from_pretrained(path).eval()
        texts = [f"sentence number {i} is about the weather and the things people do on weekends" for i in range(32)]
        tokens = sum(len(t) for t in tokenizer(texts)["input_ids"])

        def embed():
            batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            return nn.functional.normalize(pooled, dim=-1)

        with torch.inference_mode():
            return throughput(tokens, seconds, embed)
    raise SystemExit(f"unknown workload {workload}")


if __name__ == "__main__":
    name = sys.argv[1]
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    print(f"{name} {run(name.removesuffix('-packed'), secs):.1f}", flush=True)
