"""Content-gatherer heads (Lieberum et al. 2023, arXiv 2307.09458; stage ICI): heads that move the correct
option's content to the final token, where the correct-letter heads' queries read which letter to attend
to. Found by path patching into the correct-letter heads (:mod:`headatlas.detectors.dla.mcqa`), as the
S-inhibition heads are found by path patching into the name movers.

Data: the MCQA family's format (``options["mcqa_topic"/"mcqa_shots"/"mcqa_options"]``,
:func:`headatlas.detectors.dla.mcqa_ep.mcqa_format`; correct letter balanced), ``CG_PROMPTS`` prompts (seed of
the scan) and their answer-swapped twins (the same question and option values, rotated so that the answer
sits under another letter; the same length). Receivers: the
heads ``correct_letter`` labels; senders: every head in a layer before the last receiver's.

Per prompt ``P`` (answer letter ``k``), its twin ``T`` (answer ``k2``) and sender ``s``:
``e = ((M_P(P) - M_P(P[s <- T])) + (M_T(T) - M_T(T[s <- P]))) / 2`` with ``M_P = logit(k) - logit(k2)``
at the final token, ``M_T = -M_P``, and ``X[s <- Y]`` the run of ``X`` in which only the path from the
sender's output at the final token (taken from ``Y``) to the receivers' queries at the final token is
patched (:mod:`headatlas.methods.final_path_patching`; exact, one token per sender on a cached prefix).
``e`` is how much of the model's preference for the right letter reaches the correct-letter heads'
queries through the sender. Null: sign flips of ``e`` (which of the pair is called the prompt is a coin
flip of the generator). Rule: q <= 0.05, effect >= ``MIN_DROP`` logits, and the head reads the right
option's content: ``content_attention > 0``, the answer-swap contrast of the final token's attention on
an option's content tokens (the value after ``"X."``: on it when it is the answer minus on the same slot
of the twin when it is not; Lieberum et al.: the heads "attend to the content of the correct answer").
Non-senders get effect 0 with a degenerate null (never labelled; ``extras["sender"] == 0``).
``details["edges"]``: each labelled gatherer path-patched to each correct-letter head alone.

Requires ``correct_letter``; when it labels nothing the detector skips ("not found: ..."). Causal check:
mean-ablating the gatherers lowers the MCQA logit difference on held-out prompts more than layer-matched
random head sets (:func:`headatlas.detectors.dla.mcqa_ep.ep_check`, the check of ``correct_letter``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...errors import InputError
from ...methods.dla import dla_by_source
from ...methods.final_path_patching import FinalPathPatcher
from ...methods.metrics import Metric
from ...tasks.mcqa import MCQABatch, mcqa_batch
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from ..causal import effect_map_result
from ..dla.mcqa_ep import EP_OPTIONS, answer_letter_ids, ep_behaviour, ep_check, mcqa_format, swap_contrast
from .receivers import labelled_receivers, senders_before

if TYPE_CHECKING:
    from ...models import LoadedModel

# 0.1 logits: the floor of the other patching-found MCQA and IOI heads (correct, s_inhibition)
MIN_DROP = 0.1
CG_PROMPTS = 16        # prompt pairs (sign-flip null floor 2^-16 on one head's p)
CG_PROMPTS_QUICK = 12
CG_RULE = LabelRule(statistic=("drop of logit(answer letter) - logit(twin's answer letter) when the head's final-token "
                               "output from the answer-swapped twin reaches only the correct-letter heads' queries "
                               "(path patching, both directions; mean over prompts)"),
                    direction="greater", min_effect=MIN_DROP, extra_min=(("content_positive", 1.0),))


def content_spans(batch: MCQABatch, newline_len: int, *, twin: bool = False) -> list[list[tuple[int, int]]]:
    """Per prompt, each option's content tokens ``[start, end)``: after its letter up to the newline before
    the next letter (the last option: up to the end of the options block)."""
    lp = (batch.swapped_letter_pos if twin else batch.letter_pos).tolist()
    out = []
    for r, pos in enumerate(lp):
        ends = [p - newline_len for p in pos[1:]] + [int(batch.option_region[r, 1])]
        out.append([(p + 1, e) for p, e in zip(pos, ends)])
    return out


def content_attention(attn: torch.Tensor, spans: list[list[tuple[int, int]]]) -> np.ndarray:
    """``attn [B, L, H, S]`` (the final token's attention rows) -> ``[L, B, H, K]`` the mass on each
    option's content span."""
    per = [torch.stack([attn[r, :, :, a:e].sum(-1) for a, e in row], -1) for r, row in enumerate(spans)]
    return torch.stack(per, 1).double().numpy()


def pair_metric(a: int, b: int) -> Metric:
    """logit(a) - logit(b) at the last position."""
    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return last[:, a] - last[:, b]
    return Metric(f"logit[{a}]-logit[{b}]", fn)


def pair_patchers(m: LoadedModel, batch: MCQABatch, answers: torch.Tensor, r: int
                  ) -> tuple[FinalPathPatcher, FinalPathPatcher]:
    """Prompt ``r`` with its twin as the source, and the twin with the prompt as the source (each trimmed
    to its final token), with their own letter metrics."""
    f = int(batch.final_pos[r])
    P, T = batch.ids[r:r + 1, :f + 1], batch.swapped_ids[r:r + 1, :f + 1]
    k, k2 = int(answers[batch.correct[r]]), int(answers[batch.swapped_correct[r]])
    return FinalPathPatcher(m, P, T, pair_metric(k, k2)), FinalPathPatcher(m, T, P, pair_metric(k2, k))


def gatherer_result(effects: np.ndarray, sender: np.ndarray, content: np.ndarray, *, seed: int, data_description: str,
                    details: dict[str, Any] | None = None, n_perm: int = stats.N_PERM) -> DetectorResult:
    """The result from per-prompt two-way drops ``[L, B, H]`` (0 where ``sender [L, H]`` is False) and the
    per-prompt content-attention swap contrast ``[L, B, H]``."""
    att = content.mean(1)
    d = np.where(sender[:, None, :], effects, 0.0)
    return effect_map_result(
        "content_gatherer", d, CG_RULE, seed=seed, data_description=data_description,
        null_description=("sign flips of the per-prompt two-way path-patching drops (which of prompt and twin is "
                          "the prompt is a coin flip; non-senders are 0 with a degenerate null)"),
        extras={"sender": sender.astype(float), "content_attention": att,
                "content_positive": (att > 0).astype(float)}, details=details, n_perm=n_perm)


def _n_pairs(cfg: ScanConfig) -> int:
    n = cfg.n_prompts or (CG_PROMPTS_QUICK if cfg.quick else CG_PROMPTS)
    if n < 12:
        raise InputError("content_gatherer needs at least 12 prompts (the resampling unit of its null)")
    return n


def run_content_gatherer(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    n = _n_pairs(cfg)
    receivers = labelled_receivers(cfg, "correct_letter", "correct-letter heads")
    senders, sender = senders_before(receivers, m.info.n_layers, m.info.n_heads, m.info.attention_layers)
    L, H, last = m.info.n_layers, m.info.n_heads, max(layer for layer, _ in receivers)
    tok = m.tokenizer
    topic, shots, n_options = mcqa_format(cfg)
    batch = mcqa_batch(tok, n, seed=cfg.seed, topic=topic, shots=shots, n_options=n_options)
    answers = answer_letter_ids(tok, batch)
    drops = np.zeros((L, n, H))
    pairs = []
    for r in range(n):
        pp, pt = pair_patchers(m, batch, answers, r)
        e = 0.5 * (pp.drops(receivers, senders, batch_size=cfg.batch_size * 16)
                   + pt.drops(receivers, senders, batch_size=cfg.batch_size * 16))
        for (la, h), v in zip(senders, e):
            drops[la, r, h] = v
        pairs.append((pp, pt))
        cfg.tick(r + 1, n + 1)
    newline = len(tok.encode("\n", add_special_tokens=False))
    att_p = dla_by_source(m, batch.ids, batch.final_pos, {}, batch_size=cfg.batch_size).attention
    att_t = dla_by_source(m, batch.swapped_ids, batch.final_pos, {}, batch_size=cfg.batch_size).attention
    content = swap_contrast(content_attention(att_p, content_spans(batch, newline)),
                            content_attention(att_t, content_spans(batch, newline, twin=True)),
                            batch.correct.numpy(), batch.swapped_correct.numpy())
    res = gatherer_result(drops, sender, content, seed=cfg.seed,
                          data_description=(f"{n} {topic} multiple-choice prompts after {shots} solved examples (seed "
                                            f"{cfg.seed}) with {n_options} lettered options and their answer-swapped "
                                            "twins; senders: every head before layer "
                                            f"{last}; receivers: the correct-letter heads' queries at the final "
                                            "token; content attention: the final token's attention on the options' "
                                            "values, answer-swap contrast"),
                          details={"receivers": [f"L{a}H{b}" for a, b in receivers], "via": "q (final token)",
                                   "n_senders": len(senders)})
    res.details["edges"] = gatherer_edges(pairs, res.labelled, receivers)
    cfg.tick(n + 1, n + 1)
    return res


def gatherer_edges(pairs: list[tuple[FinalPathPatcher, FinalPathPatcher]], labelled: list[tuple[int, int]],
                   receivers: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Each labelled sender path-patched to each receiver alone: mean two-way drop (logits) over the prompts."""
    out = []
    for rcv in receivers:
        send = [s for s in labelled if s[0] < rcv[0]]
        if not send:
            continue
        per = np.stack([0.5 * (pp.drops([rcv], send) + pt.drops([rcv], send)) for pp, pt in pairs], 1)  # [n_send, B]
        for s, row in zip(send, per):
            out.append({"sender": f"L{s[0]}H{s[1]}", "receiver": f"L{rcv[0]}H{rcv[1]}", "effect": float(row.mean()),
                        "std": float(row.std()), "via": "q", "n_prompts": int(row.shape[0])})
    return out


CONTENT_GATHERER = register(Detector(
    name="content_gatherer", evidence="patching", metric="MCQA logit difference", stage="ICI",
    method="path patching into the correct-letter heads (MCQA)",
    summary="moves the correct option's content to the final token, where the correct-letter heads' queries read "
            "it: path patching its final-token output into their queries lowers logit(answer) - logit(other)",
    citation="Lieberum et al. 2023, arXiv 2307.09458", run=run_content_gatherer, requires=("correct_letter",),
    options=EP_OPTIONS, causal=ep_check, behaviour=ep_behaviour, version=1, default=False,
))
