"""The zero-effect test of the causal checks, over many seeds: how often is a check of heads that do nothing
special confirmed (p <= 0.05)? Nominal: 5%.

Set-up (the same as ``tests/test_causal_v3.py``): a tiny random Llama with 32 heads per layer; the behaviour is a
logit difference at the last token of 4 random-token prompts, expected to RISE under mean ablation (as for a
context head). A sibling detector of the same metric family labels the 10 heads of layer 2 whose ablation lowers
it most (their output projections amplified 3x: memory-style heads, moving the metric the other way). Per seed, the
tested set is 6 random ordinary heads of layer 2 (not siblings): they do nothing the other ordinary heads do not.

Three ways to draw the 99 random sets:

- **v3**: the clean pool (no sibling heads), the tested heads kept eligible (``detectors.causal.set_check``);
- **clean pool, tested heads excluded**: random sets never share a head with the tested set;
- **v2**: every head but the tested ones (siblings included), the rule before v3.

Run: ``python bench/zero_effect.py [--seeds 200]``; writes the "zero_effect" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import headatlas  # noqa: E402
from collect import write_section  # noqa: E402
from headatlas.atlas.records import DetectorResult, LabelRule  # noqa: E402
from headatlas.detectors import pools  # noqa: E402
from headatlas.detectors.base import ScanConfig  # noqa: E402
from headatlas.detectors.behaviours import Behaviour, at_positions, per_prompt, token_logit_diff  # noqa: E402
from headatlas.detectors.causal import set_check  # noqa: E402
from headatlas.detectors.setruns import measure  # noqa: E402

H = 32


def wide_model():
    from tiny import VOCAB, ToyTokenizer, random_ids
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=H, num_key_value_heads=8, head_dim=8, max_position_embeddings=128)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for n, p in hf.named_parameters():
            if p.dim() == 2 and ("q_proj" in n or "k_proj" in n):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    m = headatlas.load((hf, ToyTokenizer()), device="cpu")
    ids = random_ids(4, 6, seed=3)
    g = torch.Generator().manual_seed(7)
    good, bad = (torch.randint(3, VOCAB, (4,), generator=g) for _ in range(2))
    fn = at_positions(torch.full((4,), 5), 6, 1, token_logit_diff(good, bad))
    b = Behaviour(family="", metric="ld", expected="increase", ids=ids, score=per_prompt(fn), keep=1)
    clean, vals = measure(m, b, [[(2, h)] for h in range(H)])
    siblings = sorted(int(h) for h in np.argsort((vals - clean).mean(1))[:10])
    with torch.no_grad():
        w = hf.model.layers[2].self_attn.o_proj.weight
        for h in siblings:
            w[:, h * 8:(h + 1) * 8] *= 3.0
    return m, b, siblings


def labelled(name: str, heads) -> DetectorResult:
    q = np.ones((3, H))
    eff = np.zeros((3, H))
    for lh in heads:
        q[lh], eff[lh] = 0.001, 1.0
    return DetectorResult(name=name, scores=eff.copy(), null_mean=np.zeros((3, H)), null_std=np.ones((3, H)),
                          effect=eff, ci_low=eff.copy(), ci_high=eff.copy(), p_value=q.copy(), q_value=q,
                          stability=np.ones((3, H)), labelled=list(heads), rule=LabelRule("s"), data_description="",
                          null_description="", n_prompts=4, seed=0)


def rank_p(m, b, tested, sets) -> float:
    clean, vals = measure(m, b, [tested] + list(sets))
    ch = (vals - clean).mean(1)
    return float((1 + np.sum(ch[1:] >= ch[0])) / (1 + len(sets)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    m, b, siblings = wide_model()
    ordinary = [h for h in range(H) if h not in siblings]
    sib = labelled("mem", [(2, h) for h in siblings])
    everyone = {(la, h) for la in range(3) for h in range(H)}
    p = {"v3": [], "excl": [], "v2": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        tested = [(2, int(h)) for h in sorted(rng.choice(ordinary, 6, replace=False))]
        p["v3"].append(set_check(m, ScanConfig(seed=seed, results={"mem": sib}), labelled("ctx", tested), b,
                                 members=("ctx", "mem")).p_value)
        clean_free = everyone - {(2, h) for h in siblings} - set(tested)
        p["excl"].append(rank_p(m, b, tested, pools.matched_sets(tested, clean_free, rng).sets))
        p["v2"].append(rank_p(m, b, tested, pools.matched_sets(tested, everyone - set(tested), rng).sets))
        if seed % 20 == 19:
            print(seed + 1, {k: round(float(np.mean(np.array(v) <= 0.05)), 3) for k, v in p.items()}, flush=True)
    rows = {"v3": "v3: clean pool, tested heads eligible", "excl": "clean pool, tested heads excluded",
            "v2": "v2: every head but the tested ones"}
    lines = ["## zero_effect: how often a check of heads that do nothing special is confirmed", "",
             f"`python bench/zero_effect.py --seeds {args.seeds}` (tiny random Llama, 3 layers x {H} heads; 10 sibling "
             "heads of layer 2 labelled by a detector of the same metric family move the metric against the expected "
             "direction; per seed the tested set is 6 random ordinary heads of layer 2; 99 random sets per check). "
             "Nominal rate of p <= 0.05: 5%.", "",
             "| random sets drawn from | p <= 0.05 | p <= 0.01 | mean p |", "|---|---:|---:|---:|"]
    for k, label in rows.items():
        v = np.array(p[k])
        lines.append(f"| {label} | {np.mean(v <= 0.05):.1%} ({int(np.sum(v <= 0.05))}/{len(v)}) | "
                     f"{np.mean(v <= 0.01):.1%} | {v.mean():.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("zero_effect", text)


if __name__ == "__main__":
    main()
