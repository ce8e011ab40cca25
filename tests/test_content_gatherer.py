"""content_gatherer: final-position path patching (exact against full-sequence runs; known answers on
planted weights), the content-attention spans, planted statistics, the skip without correct-letter heads,
an end-to-end run on a tiny model with forced receivers (reproducible, nothing labelled on random weights)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import headatlas
from headatlas.detectors import NOT_FOUND, ScanConfig, get
from headatlas.detectors.dla.mcqa_ep import ep_check
from headatlas.detectors.patching.content_gatherer import (
    MIN_DROP,
    content_attention,
    content_spans,
    gatherer_result,
    pair_metric,
)
from headatlas.errors import InputError
from headatlas.instrument import HeadEdit, Taps, instrumented
from headatlas.methods.final_path_patching import FinalPathPatcher
from headatlas.methods.path_patching import ReceiverInputPatch

NOSKILL = {"mcqa_require_skill": False}      # the tiny models are at chance: run the MCQA statistics anyway


def _tiny(kind: str):
    from tiny import tiny_model

    return headatlas.load(tiny_model(kind), device="cpu")


def _pair(seed: int = 0, S: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(3, 64, (1, S), generator=g)
    src = base.clone()
    src[0, 3:7] = torch.randint(3, 64, (4,), generator=g)      # the twin differs in the middle, like rotated options
    return base, src


def reference_drops(m, base, src, receivers, senders, metric) -> np.ndarray:
    """Path patching with full-sequence runs: the sender's z from ``src`` at the last position only, every
    other head frozen (all positions), the receivers' queries recomputed from that run."""
    L, f = m.info.n_layers, base.shape[1] - 1

    def run(ids, edits=(), taps=None):
        with torch.no_grad(), instrumented(m, edits=list(edits), taps=taps) as rec:
            logits = m.model(input_ids=ids).logits
        return rec, float(metric(logits[:, -1:])[0])

    rb, clean = run(base, taps=Taps(z=True))
    rs, _ = run(src, taps=Taps(z=True))
    zb, zs = [rb.z(x) for x in range(L)], [rs.z(x) for x in range(L)]
    recv: dict[int, list[int]] = {}
    for layer, h in receivers:
        recv.setdefault(layer, []).append(h)
    out = []
    for layer, h in senders:
        edits = [HeadEdit(x, None, "patch", source=zb[x]) for x in range(layer, max(recv))]
        edits.append(HeadEdit(layer, [h], "patch", source=zs[layer], positions=[f]))
        rec, _ = run(base, edits, Taps(qkv=True, layers=sorted(recv)))
        _, val = run(base, [ReceiverInputPatch(r, hs, ("q",), {"q": rec.q(r)}) for r, hs in recv.items()])
        out.append(clean - val)
    return np.array(out)


# ---------------------------------------------------------------- exactness and known answers


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_final_path_patching_equals_full_sequence_path_patching(kind):
    m = _tiny(kind)
    base, src = _pair(1)
    metric = pair_metric(5, 9)
    receivers = [(1, 0), (2, 3), (2, 1)]
    senders = [(la, h) for la in range(2) for h in range(m.info.n_heads)]
    pp = FinalPathPatcher(m, base, src, metric)
    got = pp.drops(receivers, senders)
    ref = reference_drops(m, base, src, receivers, senders, metric)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    assert np.abs(ref).max() > 1e-3                                  # the senders do move the receivers' queries
    # senders in any order, and in chunks of any size, give the same numbers
    perm = senders[::-1]
    np.testing.assert_allclose(pp.drops(receivers, perm, batch_size=3)[::-1], got, atol=1e-6)
    # a layer-1 sender cannot reach the layer-1 receiver: only the layer-2 receivers see it
    only_l1 = pp.drops([(1, 0)], [(0, 2), (0, 3)])
    np.testing.assert_allclose(only_l1, reference_drops(m, base, src, [(1, 0)], [(0, 2), (0, 3)], metric), atol=2e-5)


def test_known_answers_zero_query_and_zero_output_weights():
    """Receivers whose query weights are zero read nothing a sender sends: every drop is 0. A sender whose
    output projection is zero sends nothing: its drop is 0 while the other senders' are not."""
    m = _tiny("llama")
    base, src = _pair(2)
    metric = pair_metric(7, 11)
    d = m.info.d_head
    attn = m.model.model.layers
    senders = [(0, h) for h in range(4)] + [(1, h) for h in range(4)]
    with torch.no_grad():
        attn[0].self_attn.o_proj.weight[:, 2 * d:3 * d] = 0.0           # L0H2 writes nothing
    drops = FinalPathPatcher(m, base, src, metric).drops([(2, 0), (2, 1)], senders)
    assert abs(drops[2]) < 1e-6 and np.abs(np.delete(drops, 2)).max() > 1e-3
    with torch.no_grad():
        attn[2].self_attn.q_proj.weight[0:2 * d] = 0.0                  # L2H0 and L2H1 have no query
    zero = FinalPathPatcher(m, base, src, metric).drops([(2, 0), (2, 1)], senders)
    np.testing.assert_allclose(zero, 0.0, atol=1e-6)


def test_final_path_patching_refuses_bad_input():
    m = _tiny("llama")
    base, src = _pair(0)
    pp = FinalPathPatcher(m, base, src, pair_metric(3, 4))
    with pytest.raises(InputError, match="not before the receivers' last layer"):
        pp.drops([(1, 0)], [(1, 2)])
    with pytest.raises(InputError, match="at least one receiver"):
        pp.drops([], [(0, 1)])
    with pytest.raises(InputError, match="one prompt pair of equal length"):
        FinalPathPatcher(m, base, src[:, :-1], pair_metric(3, 4))
    with pytest.raises(InputError, match="suffix runner"):
        FinalPathPatcher(_tiny("gemma3"), base, src, pair_metric(3, 4))      # sliding window 6 < 12 positions


# ---------------------------------------------------------------- content spans and statistics


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return headatlas.load(english_tiny_model(n_ctx=512), device="cpu")


def test_content_spans_cover_each_options_value(english):
    from headatlas.tasks.mcqa import mcqa_batch

    tok = english.tokenizer
    b = mcqa_batch(tok, 4, seed=0)
    nl = len(tok.encode("\n", add_special_tokens=False))
    for twin, ids in ((False, b.ids), (True, b.swapped_ids)):
        for r, spans in enumerate(content_spans(b, nl, twin=twin)):
            texts = [tok.decode(ids[r, a:e]) for a, e in spans]
            lines = tok.decode(ids[r]).split("\n")[1:5]
            assert texts == [x[1:] for x in lines]                       # ". 42" after the letter "A"
    attn = torch.zeros(2, 1, 1, b.ids.shape[1])
    spans = content_spans(b, nl)[:2]
    attn[0, 0, 0, spans[0][2][0]] = 0.5
    got = content_attention(attn, spans)
    assert got.shape == (1, 2, 1, 4) and got[0, 0, 0].tolist() == [0, 0, 0.5, 0] and got[0, 1].sum() == 0


def test_gatherer_planted_drops_content_attention_and_non_senders():
    rng = np.random.default_rng(0)
    drop = rng.normal(0, 0.05, (3, 16, 4))
    content = rng.normal(0, 0.01, (3, 16, 4))
    drop[0, :, 1] += 0.5
    content[0, :, 1] += 0.2                    # a gatherer: carries the answer to the receivers, reads the answer
    drop[1, :, 2] += 0.5
    content[1, :, 2] -= 0.2                    # carries something, but reads the wrong options: not labelled
    drop[1, :, 0] += 0.04                      # consistent but below MIN_DROP
    drop[2, :, 3] += 5.0                       # layer 2 holds the receivers: not a sender
    content[2, :, 3] += 0.3
    sender = np.zeros((3, 4), dtype=bool)
    sender[:2] = True
    r = gatherer_result(drop, sender, content, seed=0, data_description="planted", n_perm=999)
    assert r.labelled == [(0, 1)] and r.effect[0, 1] >= MIN_DROP
    assert r.q_value[1, 2] <= 0.05 and r.extras["content_positive"][1, 2] == 0
    assert r.effect[2, 3] == 0 and r.p_value[2, 3] == 1.0 and r.extras["sender"][2, 3] == 0
    again = gatherer_result(drop, sender, content, seed=0, data_description="planted", n_perm=999)
    assert np.array_equal(again.p_value, r.p_value)
    noise = gatherer_result(rng.normal(0, 0.05, drop.shape), sender, np.abs(content), seed=0,
                            data_description="noise", n_perm=999)
    assert noise.labelled == []


# ---------------------------------------------------------------- end to end


def _forced(result, heads):
    out = copy.deepcopy(result)
    out.labelled = list(heads)
    return out


def test_skips_without_correct_letter_heads(english):
    cl = get("correct_letter").run(english, ScanConfig(seed=0, quick=True, options=NOSKILL))
    assert cl.labelled == []
    for results, why in (({"correct_letter": cl}, "no correct-letter heads were labelled"),
                         ({"correct_letter": _forced(cl, [(0, 1)])}, "the correct-letter heads are all in layer 0")):
        with pytest.raises(InputError, match=NOT_FOUND + why):
            get("content_gatherer").run(english, ScanConfig(seed=0, quick=True, results=results))
    d = get("content_gatherer")
    assert d.requires == ("correct_letter",) and d.stage == "ICI" and d.evidence == "patching"
    assert d.metric == "MCQA logit difference" and d.causal is ep_check and not d.default


def test_runs_with_forced_receivers_reproducibly_and_labels_nothing_on_random_weights(english):
    cfg = ScanConfig(seed=0, quick=True, options=NOSKILL)
    cl = _forced(get("correct_letter").run(english, cfg), [(1, 0), (1, 3)])
    forced = ScanConfig(seed=0, quick=True, results={"correct_letter": cl})
    r = get("content_gatherer").run(english, forced)
    L, H = english.info.n_layers, english.info.n_heads
    assert r.scores.shape == (L, H) and r.n_prompts == 12 and np.isfinite(r.p_value).all()
    assert (r.extras["sender"][0] == 1).all() and (r.extras["sender"][1] == 0).all()
    assert np.abs(r.effect[0]).max() > 0 and (r.effect[1] == 0).all()
    assert r.details["receivers"] == ["L1H0", "L1H3"] and r.labelled == [] and r.details["edges"] == []
    again = get("content_gatherer").run(english, ScanConfig(seed=0, quick=True, results={"correct_letter": cl}))
    for f in ("scores", "effect", "p_value", "q_value"):
        assert np.array_equal(getattr(r, f), getattr(again, f), equal_nan=True), f
    r.labelled = [(0, 1)]
    c = get("content_gatherer").causal(english, cfg, r)
    assert c.expected == "decrease" and (len(c.random_effects) >= 99 or c.exhaustive) and np.isfinite(c.effect)
