"""A tiny random Llama with a small *English* BPE tokenizer trained (offline, in a second) on the
package's own texts, so the text detectors can run end to end without a real model."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def english_tokenizer(vocab_size: int = 1200):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from headatlas.tasks import ioi
    from headatlas.tasks.needle import COLOURS, QUESTION, THINGS
    from headatlas.tasks.syntax import syntax_data
    from headatlas.tasks.text import sentences

    lex = syntax_data()["lexicon"]
    corpus = list(sentences()) * 3
    corpus += [" ".join(words) for words in lex.values()] * 4
    corpus += [" ".join(list(ioi.NAMES) + list(ioi.PLACES) + list(ioi.OBJECTS))] * 6
    corpus += [t.replace("{", "").replace("}", "") for t in ioi.TEMPLATES] * 4
    corpus += [QUESTION.format(c=c, t=t) for c in COLOURS for t in THINGS]
    corpus += ["Question: What is 7 + 5? Answer: A. B. C. D."] * 4
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def english_tiny_model(n_ctx: int = 512, seed: int = 0, tokenizer=None):
    """``(hf_model, tokenizer)``: 2 layers x 4 heads (2 kv heads), random weights, English BPE (or the
    given ``tokenizer``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = english_tokenizer() if tokenizer is None else tokenizer
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_ctx,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if p.dim() == 2 and ("q_proj" in name or "k_proj" in name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, tok
