"""The inputs of the patching benchmark and the recompute floor of each (``bench/bench_patching.py``).

Cases (clean/corrupted IOI twins of smollm2's tokenizer; the metric is logit(IO) - logit(S) at the last
position in every case):

- ``ioi``: 2 IOI prompts of 15 tokens (the issue-12 bench);
- ``ioi16``: a batch of 16 IOI prompts of 15 tokens;
- ``prefix``: 2 prompts of 128 tokens whose clean and corrupted twins share their first 110 tokens (a
  passage of filler text, then the IOI sentence whose names differ: the first difference is position 110);
- ``firstwords``: 2 prompts of 128 tokens that differ in their first words (the IOI clause with the names
  opens the prompt, the filler follows, the sentence closes at the end: the first difference is position 2).

The recompute floor of a case: an exact patch of head ``(l, h)`` on prompt ``b`` must rerun, in each of the
layers after ``l``, every position from the first one the patch changes (earlier positions are those of the
base run) and unembed the last position. Counting multiply-adds of the linear maps (q, k, v, o, MLP),
attention scores and mixing, and the unembedding, summed over all heads and prompts and divided by the
multiply-adds of one plain forward of the batch (all layers, all positions, every position unembedded),
gives the floor in plain-forward units. It leaves out the patched layer's own output projection and MLP
(which an exact patch must also redo), so it is a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from headatlas.methods.patching import first_change
from headatlas.tasks.ioi import ioi_batch

CASES = ("ioi", "ioi16", "prefix", "firstwords")
LONG = 128          # tokens of the long prompts
SHARED = 110        # positions the ``prefix`` twins share


@dataclass
class Case:
    """One patching input: ``clean``/``corrupted [B, S]`` ids, answer and wrong token ids ``[B]``."""

    name: str
    description: str
    clean: torch.Tensor
    corrupted: torch.Tensor
    io_ids: torch.Tensor
    s_ids: torch.Tensor


def filler_ids(tokenizer, n: int) -> list[int]:
    """The first ``n`` tokens of the package's English sentences (no BOS), as one passage."""
    text = resources.files("headatlas.data").joinpath("sentences.txt").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    ids = tokenizer.encode(" " + " ".join(lines), add_special_tokens=False)
    if len(ids) < n:
        raise ValueError(f"the filler passage has {len(ids)} tokens, fewer than {n}")
    return [int(t) for t in ids[:n]]


def _split_ioi(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """An IOI sentence of template 0 split after its comma: (clause with both names, closing with S)."""
    clause, rest = text.split(",", 1)
    enc = lambda s: [int(t) for t in tokenizer.encode(s, add_special_tokens=False)]  # noqa: E731
    return enc(clause + ","), enc(rest)


def _long_case(tokenizer, name: str, n: int, seed: int) -> Case:
    batch = ioi_batch(tokenizer, n, seed=seed)
    bos = [int(batch.clean_ids[0, 0])] if tokenizer.bos_token_id is not None else []
    rows = {"clean": [], "corrupted": []}
    for kind, texts in (("clean", batch.clean_texts), ("corrupted", batch.corrupted_texts)):
        for text in texts:
            clause, close = _split_ioi(tokenizer, text)
            room = LONG - len(bos) - len(clause) - len(close)
            if name == "prefix":        # filler, then "When" + names ... (first difference at SHARED)
                lead = SHARED - len(bos) - 1
                fill = filler_ids(tokenizer, room)
                rows[kind].append(bos + fill[:lead] + clause + fill[lead:] + close)
            else:                       # names first, filler after the clause
                rows[kind].append(bos + clause + filler_ids(tokenizer, room) + close)
    clean, corr = torch.tensor(rows["clean"]), torch.tensor(rows["corrupted"])
    diff = (clean != corr).any(0).nonzero()
    desc = (f"{n} prompts x {clean.shape[1]} tokens, twins identical before position {int(diff[0])}"
            if name == "prefix" else f"{n} prompts x {clean.shape[1]} tokens differing from position {int(diff[0])}")
    return Case(name, desc, clean, corr, batch.io_ids, batch.s_ids)


def make_case(tokenizer, name: str, *, seed: int = 0, prompts: int = 2) -> Case:
    """The inputs of case ``name`` (see the module docstring)."""
    if name in ("ioi", "ioi16"):
        n = 16 if name == "ioi16" else prompts
        b = ioi_batch(tokenizer, n, seed=seed)
        return Case(name, f"{n} IOI prompts x {b.clean_ids.shape[1]} tokens", b.clean_ids, b.corrupted_ids,
                    b.io_ids, b.s_ids)
    if name in ("prefix", "firstwords"):
        return _long_case(tokenizer, name, prompts, seed)
    raise ValueError(f"unknown case {name!r}; one of {', '.join(CASES)}")


def _macs_per_token_layer(m) -> int:
    """Multiply-adds of one token through one decoder layer's linear maps (q, k, v, o and a gated MLP)."""
    info = m.info
    d, H, Hkv, dh = info.d_model, info.n_heads, info.n_kv_heads, info.d_head
    cfg = m.model.config.get_text_config() if hasattr(m.model.config, "get_text_config") else m.model.config
    d_mlp = int(getattr(cfg, "intermediate_size", 0) or 4 * d)
    return d * H * dh * 2 + d * Hkv * dh * 2 + 3 * d * d_mlp


def _attention_macs(info, start: int, seq: int) -> int:
    """Scores and mixing of query positions ``start..seq-1`` over their causal keys, all heads."""
    q = np.arange(start, seq)
    return int(2 * info.n_heads * info.d_head * (q + 1).sum())


def plain_forward_macs(m, batch: int, seq: int) -> int:
    """One plain forward of ``batch`` prompts of ``seq`` tokens (every position unembedded)."""
    info = m.info
    per_prompt = (info.n_layers * (seq * _macs_per_token_layer(m) + _attention_macs(info, 0, seq))
                  + seq * info.d_model * info.vocab_size)
    return batch * per_prompt


def recompute_floor(m, case: Case) -> dict:
    """The floor of exact patching of every head on ``case`` (module docstring), from the first position
    each patch changes (base = corrupted run, source = clean run, as in denoising)."""
    from headatlas.methods.engine import base_run
    from headatlas.methods.metrics import logit_diff

    info = m.info
    L, H = info.n_layers, info.n_heads
    B, S = case.corrupted.shape
    met = logit_diff(case.io_ids, case.s_ids)
    base = base_run(m, case.corrupted.to(m.device), met, keep_hidden=False, keep_z=True)
    src = base_run(m, case.clean.to(m.device), met, keep_hidden=False, keep_z=True)
    hh, bb = torch.arange(H).repeat_interleave(B), torch.arange(B).repeat(H)
    layer_tok = _macs_per_token_layer(m)
    unembed = info.d_model * info.vocab_size
    total, layer_rows, earliest = 0, 0, S
    for layer in range(L):
        first = first_change(base.z[layer], src.z[layer], hh, bb).numpy()
        earliest = min(earliest, int(first.min()))
        after = L - 1 - layer
        for p in first[first < S]:
            total += after * ((S - int(p)) * layer_tok + _attention_macs(info, int(p), S)) + unembed
            layer_rows += after
    plain = plain_forward_macs(m, B, S)
    return {"floor_forwards": total / plain, "layer_stacks": layer_rows / (L * B), "first_change": earliest}
