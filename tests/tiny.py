"""Tiny random models built from configs: the unit-test fixtures (no downloads, CPU, float32)."""

from __future__ import annotations

import torch
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

VOCAB = 64
N_CTX = 128


class ToyTokenizer:
    """A minimal tokenizer over a 64-token vocabulary: token ``i`` is the word ``t{i}``; BOS = 1."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0
    vocab_size = VOCAB
    padding_side = "right"

    def __len__(self) -> int:
        return VOCAB

    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids] if isinstance(ids, (list, tuple)) else f"t{ids}"

    def decode(self, ids, **_):
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return " ".join(f"t{int(i)}" for i in (ids if isinstance(ids, (list, tuple)) else [ids]))

    def encode(self, text, add_special_tokens=True, **_):
        ids = [int(w[1:]) for w in text.split() if w.startswith("t") and w[1:].isdigit()]
        return ([self.bos_token_id] if add_special_tokens else []) + ids

    def __call__(self, text, return_tensors=None, add_special_tokens=True, **_):
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.encode(t, add_special_tokens) for t in texts]
        n = max(len(r) for r in rows)
        ids = [r + [self.pad_token_id] * (n - len(r)) for r in rows]
        mask = [[1] * len(r) + [0] * (n - len(r)) for r in rows]
        if return_tensors == "pt":
            ids, mask = torch.tensor(ids), torch.tensor(mask)
        elif isinstance(text, str):
            ids, mask = ids[0], mask[0]
        return {"input_ids": ids, "attention_mask": mask}

    def get_vocab(self):
        return {f"t{i}": i for i in range(VOCAB)}

    @property
    def all_special_ids(self):
        return [0, 1, 2]


def _build(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_CTX)
        return LlamaForCausalLM(cfg)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=N_CTX,
                         bos_token_id=1, eos_token_id=2)
        return GPT2LMHeadModel(cfg)
    if kind == "gemma3":
        cfg = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=6,
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                               max_position_embeddings=N_CTX)
        return Gemma3ForCausalLM(cfg)
    if kind == "qwen2":
        cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_CTX,
                          use_sliding_window=False)
        return Qwen2ForCausalLM(cfg)
    raise ValueError(kind)


KINDS = ("llama", "gpt2", "gemma3", "qwen2")


def tiny_model(kind: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random model of ``kind`` in eval mode with sdpa attention, and the toy tokenizer."""
    model = _build(kind, seed).to(dtype).eval()
    # Random init with tiny std gives near-uniform attention; widen it so patterns are peaked.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if p.dim() == 2 and ("q_proj" in name or "k_proj" in name or "c_attn" in name):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(dtype) * 0.3)
    return model, ToyTokenizer()


def random_ids(batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g)
    ids[:, 0] = ToyTokenizer.bos_token_id
    return ids


def toy_fast_tokenizer():
    """A real (saveable) ``PreTrainedTokenizerFast`` over the same 64 words ``t0..t63`` (BOS ``t1``, EOS ``t2``,
    PAD ``t0``), for tests that save a model folder to disk and load it back by path."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="t1", eos_token="t2", pad_token="t0", unk_token="t0")


def save_tiny_folder(path, kind: str = "llama", seed: int = 0):
    """Save a tiny random model and a saveable tokenizer into ``path``; returns the hf model."""
    model, _ = tiny_model(kind, seed)
    model.save_pretrained(path)
    toy_fast_tokenizer().save_pretrained(path)
    return model
