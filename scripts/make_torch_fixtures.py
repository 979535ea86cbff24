"""Generate small PyTorch reference fixtures for typeformer's numeric-parity tests.

Writes these safetensors files into tests/fixtures/torch/ (all tensors contiguous
float32; integer data such as lengths and token ids are stored as float32 because
the Rust reader only reads F32/F64; small descriptive strings live in the metadata):

  mha.safetensors
      nn.MultiheadAttention(16, 4, batch_first=True, bias=True) state dict under its own
      names, input.x [2,5,16], input.memory [2,7,16], input.memory_lengths [2] = [7,4]
      (right padding: positions >= length are padding), output.self_causal (causal
      self-attention of x), output.cross_padded (query x, key=value=memory, key padding).
  encoder_layer_post_relu.safetensors, encoder_layer_pre_gelu.safetensors,
  encoder_layer_pre_gelu_nobias.safetensors
      nn.TransformerEncoderLayer(16, 4, 32, dropout=0, batch_first=True,
      norm_first=False/True, activation="relu"/"gelu", bias=True/True/False) state dict, input.x [2,6,16],
      input.lengths [2] = [6,3], input.probe [2,6,16], output.y = layer(x, key padding),
      grad.x and grad.<param> of loss = (y * probe).sum().
  transformer_post.safetensors, transformer_pre_gelu.safetensors
      nn.Transformer(16, 4, 2 enc, 2 dec, ff 32, dropout=0, batch_first=True,
      norm_first=False/True, activation="relu"/"gelu") state dict, input.src [2,7,16],
      input.tgt [2,5,16], input.src_lengths [2] = [7,5], input.tgt_lengths [2] = [5,3],
      output.y [2,5,16] (causal tgt mask + all key-padding masks), output.memory [2,7,16]
      (model.encoder(src, key padding), includes encoder.norm).
  gpt2_tiny.safetensors
      transformers GPT2LMHeadModel(vocab 50, n_positions 16, n_embd 16, 2 layers,
      4 heads, no dropout): model.transformer.state_dict() under Hugging Face GPT-2
      checkpoint names (wte.weight, h.0.attn.c_attn.weight [in, out], ..., ln_f.bias;
      no lm_head.weight, it is tied to wte), input.ids [2,8], output.logits [2,8,50].
  gpt2_untied.safetensors
      The same with tie_word_embeddings=False: the whole GPT2LMHeadModel state dict
      (transformer.*, lm_head.weight without a bias), input.ids, output.logits.
  bert_for_pretraining.safetensors, bert_for_masked_lm.safetensors,
  bert_for_sequence_classification.safetensors
      transformers BertFor...(vocab 30, hidden 16, 2 layers, 2 heads, intermediate 32, 12
      positions; BertForMaskedLM has no pooler) state dicts with their heads (cls.*,
      classifier.*), input.ids [2,6], input.lengths [2] = [6,4], output.hidden (the encoder's
      last_hidden_state under the attention mask), output.pooled (where there is a pooler).

All LayerNorm weights/biases are randomised (weight = 1 + 0.1*randn, bias = 0.1*randn)
so that a wrong norm mapping is caught. Outputs are computed with autograd enabled and
modules in train mode (dropout is 0) so PyTorch's fused "fast path" / nested tensors
are never used; only GPT-2 runs in eval mode. Boolean masks use True = masked.

Run from the repository root:

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch transformers safetensors numpy && .venv-torch/bin/python scripts/make_torch_fixtures.py

Last run with torch 2.15.0+cu132, transformers 5.24.0, safetensors 0.8.0, numpy 2.4.6
(CPU only).
"""

import json
import os
import struct

import torch
import torch.nn as nn
from safetensors.torch import save_file

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "torch")

D_MODEL = 16
HEADS = 4
FF = 32


def padding_mask(lengths, seq_len):
    """Bool key-padding mask [batch, seq_len]: True where position >= length."""
    return torch.arange(seq_len)[None, :] >= lengths[:, None]


def causal_mask(seq_len):
    """Bool [seq_len, seq_len] upper triangle (excluding diagonal): True = masked."""
    return torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool), diagonal=1)


def randomise_layer_norms(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1.0 + 0.1 * torch.randn_like(m.weight))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn_like(m.bias))


def as_f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def save(name, tensors, metadata):
    tensors = {k: as_f32(v) for k, v in tensors.items()}
    metadata = {k: str(v) for k, v in metadata.items()}
    metadata.setdefault("torch_version", torch.__version__)
    path = os.path.join(OUT_DIR, name)
    save_file(tensors, path, metadata=metadata)
    canonicalise_header(path)
    os.chmod(path, 0o644)  # safetensors creates files 0600
    print(f"wrote {os.path.relpath(path)} ({len(tensors)} tensors, {os.path.getsize(path)} bytes)")


def canonicalise_header(path):
    """Rewrite the JSON header with sorted metadata keys so reruns are byte-identical.

    safetensors writes `__metadata__` in hash-map order, which changes between runs. Tensor
    entries and data offsets are left untouched; the header is re-padded with spaces to a
    multiple of 8 bytes, as safetensors itself does.
    """
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {}
    if meta is not None:
        ordered["__metadata__"] = dict(sorted(meta.items()))
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def state_dict_tensors(module, prefix=""):
    return {prefix + k: v for k, v in module.state_dict().items()}


def make_mha():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(embed_dim=D_MODEL, num_heads=HEADS, batch_first=True, bias=True)
    mha.train()
    x = torch.randn(2, 5, D_MODEL)
    memory = torch.randn(2, 7, D_MODEL)
    memory_lengths = torch.tensor([7, 4])
    # Autograd is enabled and parameters require grad, so the fast path is not taken.
    self_causal, _ = mha(x, x, x, attn_mask=causal_mask(5), need_weights=False)
    cross_padded, _ = mha(
        x, memory, memory, key_padding_mask=padding_mask(memory_lengths, 7), need_weights=False
    )
    tensors = state_dict_tensors(mha)
    tensors.update(
        {
            "input.x": x,
            "input.memory": memory,
            "input.memory_lengths": memory_lengths.float(),
            "output.self_causal": self_causal,
            "output.cross_padded": cross_padded,
        }
    )
    save(
        "mha.safetensors",
        tensors,
        {
            "module": "nn.MultiheadAttention",
            "d_model": D_MODEL,
            "heads": HEADS,
            "bias": "true",
            "batch_first": "true",
            "masks": "bool, True = masked; self_causal: upper-triangle attn_mask; "
            "cross_padded: key_padding_mask = position >= memory_lengths",
        },
    )


def make_encoder_layer(file_name, norm_first, activation, seed, bias=True):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(
        d_model=D_MODEL,
        nhead=HEADS,
        dim_feedforward=FF,
        dropout=0.0,
        batch_first=True,
        norm_first=norm_first,
        activation=activation,
        bias=bias,
    )
    randomise_layer_norms(layer)
    layer.train()
    x = torch.randn(2, 6, D_MODEL, requires_grad=True)
    lengths = torch.tensor([6, 3])
    probe = torch.randn(2, 6, D_MODEL)
    y = layer(x, src_key_padding_mask=padding_mask(lengths, 6))
    loss = (y * probe).sum()
    loss.backward()
    tensors = state_dict_tensors(layer)
    tensors.update(
        {
            "input.x": x,
            "input.lengths": lengths.float(),
            "input.probe": probe,
            "output.y": y,
            "grad.x": x.grad,
        }
    )
    for name, p in layer.named_parameters():
        tensors["grad." + name] = p.grad
    save(
        file_name,
        tensors,
        {
            "module": "nn.TransformerEncoderLayer",
            "d_model": D_MODEL,
            "heads": HEADS,
            "dim_feedforward": FF,
            "dropout": "0.0",
            "norm_first": str(norm_first).lower(),
            "bias": str(bias).lower(),
            "activation": activation + (" (exact erf)" if activation == "gelu" else ""),
            "layer_norm_eps": layer.norm1.eps,
            "loss": "(output.y * input.probe).sum()",
            "masks": "src_key_padding_mask = position >= input.lengths (True = masked)",
        },
    )


def make_transformer(file_name, norm_first, activation, seed):
    torch.manual_seed(seed)
    model = nn.Transformer(
        d_model=D_MODEL,
        nhead=HEADS,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=FF,
        dropout=0.0,
        batch_first=True,
        norm_first=norm_first,
        activation=activation,
    )
    randomise_layer_norms(model)
    model.train()
    src = torch.randn(2, 7, D_MODEL)
    tgt = torch.randn(2, 5, D_MODEL)
    src_lengths = torch.tensor([7, 5])
    tgt_lengths = torch.tensor([5, 3])
    src_kpm = padding_mask(src_lengths, 7)
    tgt_kpm = padding_mask(tgt_lengths, 5)
    y = model(
        src,
        tgt,
        tgt_mask=causal_mask(5),
        src_key_padding_mask=src_kpm,
        tgt_key_padding_mask=tgt_kpm,
        memory_key_padding_mask=src_kpm,
        tgt_is_causal=True,
    )
    memory = model.encoder(src, src_key_padding_mask=src_kpm)
    tensors = state_dict_tensors(model)
    tensors.update(
        {
            "input.src": src,
            "input.tgt": tgt,
            "input.src_lengths": src_lengths.float(),
            "input.tgt_lengths": tgt_lengths.float(),
            "output.y": y,
            "output.memory": memory,
        }
    )
    save(
        file_name,
        tensors,
        {
            "module": "nn.Transformer",
            "d_model": D_MODEL,
            "heads": HEADS,
            "num_encoder_layers": 2,
            "num_decoder_layers": 2,
            "dim_feedforward": FF,
            "dropout": "0.0",
            "norm_first": str(norm_first).lower(),
            "activation": activation + (" (exact erf)" if activation == "gelu" else ""),
            "layer_norm_eps": model.encoder.norm.eps,
            "final_norms": "encoder.norm, decoder.norm",
            "masks": "tgt_mask causal (True = masked); src/memory key padding = position >= "
            "input.src_lengths; tgt key padding = position >= input.tgt_lengths",
            "output.memory": "model.encoder(src, src_key_padding_mask) incl. encoder.norm",
        },
    )


def make_gpt2():
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(4)
    config = GPT2Config(
        vocab_size=50,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    randomise_layer_norms(model)
    model.eval()
    ids = torch.randint(0, config.vocab_size, (2, 8))
    with torch.no_grad():
        logits = model(ids).logits
    state = model.transformer.state_dict()
    buffers = sorted(k for k in state if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"))
    print(f"gpt2: attention mask buffers in transformer.state_dict(): {buffers or 'none'}")
    tensors = dict(state)
    tensors.update({"input.ids": ids.float(), "output.logits": logits})
    save(
        "gpt2_tiny.safetensors",
        tensors,
        {
            "module": "transformers.GPT2LMHeadModel",
            "transformers_version": transformers.__version__,
            "vocab_size": config.vocab_size,
            "n_positions": config.n_positions,
            "n_embd": config.n_embd,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.n_inner if config.n_inner is not None else 4 * config.n_embd,
            "activation_function": config.activation_function,
            "layer_norm_epsilon": config.layer_norm_epsilon,
            "dropout": "0.0 (resid, embd, attn)",
            "tied_lm_head": "true (logits = h @ wte.weight^T; lm_head.weight not stored)",
            "weight_layout": "Conv1D weights stored [in, out]",
        },
    )


def make_hf_bert(file_name, head, seed):
    """A tiny Hugging Face BERT with a task head: its whole state dict (`bert.*` and the head's
    tensors), input.ids [2,6] with input.lengths [2] = [6,4] (attention mask), output.hidden
    (model.bert(...).last_hidden_state) and, when the model has a pooler, output.pooled."""
    import transformers
    from transformers import BertConfig

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=12,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    model = getattr(transformers, head)(config)
    randomise_layer_norms(model)
    model.eval()
    ids = torch.randint(0, config.vocab_size, (2, 6))
    lengths = torch.tensor([6, 4])
    mask = (~padding_mask(lengths, 6)).long()
    with torch.no_grad():
        out = model.bert(ids, attention_mask=mask)
    tensors = dict(model.state_dict())
    tensors.update({"input.ids": ids.float(), "input.lengths": lengths.float(), "output.hidden": out.last_hidden_state})
    if out.pooler_output is not None:
        tensors["output.pooled"] = out.pooler_output
    save(
        file_name,
        tensors,
        {
            "module": f"transformers.{head}",
            "transformers_version": transformers.__version__,
            "config": "vocab 30, hidden 16, 2 layers, 2 heads, intermediate 32, 12 positions, 2 types, gelu",
            "pooler": "yes" if out.pooler_output is not None else "no",
        },
    )


def make_gpt2_untied():
    """GPT2LMHeadModel with tie_word_embeddings=False: its whole state dict (`transformer.*` and
    lm_head.weight, which has no bias), input.ids [2,8], output.logits [2,8,50]."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(7)
    config = GPT2Config(
        vocab_size=50,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    model = GPT2LMHeadModel(config)
    randomise_layer_norms(model)
    model.eval()
    ids = torch.randint(0, config.vocab_size, (2, 8))
    with torch.no_grad():
        logits = model(ids).logits
    tensors = {k: v for k, v in model.state_dict().items() if not k.endswith(".attn.bias")}
    tensors.update({"input.ids": ids.float(), "output.logits": logits})
    save(
        "gpt2_untied.safetensors",
        tensors,
        {"module": "transformers.GPT2LMHeadModel", "transformers_version": transformers.__version__, "tied_lm_head": "false"},
    )


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT_DIR, exist_ok=True)
    make_mha()
    make_encoder_layer("encoder_layer_post_relu.safetensors", norm_first=False, activation="relu", seed=1)
    make_encoder_layer("encoder_layer_pre_gelu.safetensors", norm_first=True, activation="gelu", seed=2)
    make_encoder_layer("encoder_layer_pre_gelu_nobias.safetensors", norm_first=True, activation="gelu", seed=6, bias=False)
    make_transformer("transformer_post.safetensors", norm_first=False, activation="relu", seed=3)
    make_transformer("transformer_pre_gelu.safetensors", norm_first=True, activation="gelu", seed=5)
    make_gpt2()
    make_hf_bert("bert_for_pretraining.safetensors", "BertForPreTraining", seed=8)
    make_hf_bert("bert_for_masked_lm.safetensors", "BertForMaskedLM", seed=9)
    make_hf_bert("bert_for_sequence_classification.safetensors", "BertForSequenceClassification", seed=10)
    make_gpt2_untied()


if __name__ == "__main__":
    main()
