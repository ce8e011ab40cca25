"""The bench harness of bench/bench_scan.py: it records every forward a scan runs and can replay
them through the plain model (generation with a KV cache included)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from atlas_fakes import fake_registry  # noqa: F401  (fixture)
from tiny import random_ids, tiny_model

import headatlas

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_scan  # noqa: E402


def test_records_and_replays_forwards_generation_and_decoder_calls():
    m = headatlas.load(tiny_model("llama"), device="cpu")
    ids = random_ids(2, 10)
    with bench_scan.record_forwards(m) as rec:
        rec.tag = "gen"
        m.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False, pad_token_id=0)
        rec.tag = "dec"
        m.model.get_decoder()(ids)
        rec.tag = "full"
        m.model(ids)
    assert [(c.tag, c.past_len, c.decoder_only) for c in rec.calls] == [
        ("gen", 0, False), ("gen", 10, False), ("gen", 11, False), ("dec", 0, True), ("full", 0, False)]
    # every token layer 0 saw is accounted for by a recorded call
    for tag in ("gen", "dec", "full"):
        assert sum(c.tokens for c in rec.calls if c.tag == tag) == rec.layer0_tokens[tag]
    seconds, unreplayable = bench_scan.replay(m, rec.calls)
    assert unreplayable == 0 and seconds > 0


def test_tags_calls_by_detector_during_a_scan(fake_registry):
    m = headatlas.load(tiny_model("gpt2"), device="cpu")
    with bench_scan.record_forwards(m) as rec:
        headatlas.scan(m, ["fake_prev", "fake_planted"], quick=True, batch_size=2,
                       progress=bench_scan.Tagger(rec))
    assert [c.tag for c in rec.calls] == ["fake_prev", "fake_prev"]      # 4 quick prompts in batches of 2
    assert rec.layer0_tokens == {"fake_prev": 4 * 24}
