"""The detector registry as a whole (parametrised over ``names()``, never a hand-kept list): every
registered detector labels nothing on random-weight models, reproduces bit-for-bit with the same
seed, survives the JSON round trip, and declares a causal check or why it has none."""

from __future__ import annotations

import numpy as np
import pytest
from english_tiny import english_tiny_model
from tiny import tiny_model

import headatlas
from headatlas import stats
from headatlas.atlas import Atlas
from headatlas.atlas.records import PER_HEAD_FIELDS
from headatlas.detectors import NOT_FOUND, Detector, LabelRule, ScanConfig, all_detectors, get, names, register, scan_order
from headatlas.detectors.base import unregister
from headatlas.errors import InputError

NAMES = names()


def _random_models():
    yield "english-llama-s0", english_tiny_model(seed=0)
    yield "english-llama-s1", english_tiny_model(seed=1)
    yield "english-llama-s2", english_tiny_model(seed=2)
    yield "toy-gemma3", tiny_model("gemma3")
    yield "toy-llama", tiny_model("llama")


@pytest.fixture(scope="module")
def random_scans():
    """One quick scan of every registered detector per random-weight model (no causal checks)."""
    out = {}
    for label, spec in _random_models():
        out[label] = headatlas.scan(spec, "all", seed=0, quick=True, causal=False)
    return out


def test_every_detector_declares_a_causal_check_or_why_not():
    for d in all_detectors():
        assert d.causal is not None or d.no_causal, d.name
        assert d.stage in ("KR", "ICI", "LR", "EP") and d.summary and d.citation and d.method


def test_every_detector_lives_in_the_folder_of_its_evidence_and_declares_its_metric_family():
    from headatlas.detectors.base import EVIDENCE, METRIC_FAMILIES, by_metric, same_metric

    for d in all_detectors():
        assert d.evidence in EVIDENCE, d.name
        folder = {"pattern": "patterns", "dla": "dla", "patching": "patching", "probing": "probing"}[d.evidence]
        assert d.run.__module__.split(".")[2] == folder, (d.name, d.run.__module__, d.evidence)
        # attention-defined <=> no behavioural metric <=> no causal check
        assert d.metric != "" or d.causal is None, d.name
        assert d.metric == "" or d.metric in METRIC_FAMILIES
    families = by_metric()
    assert set(families["repeat loss"]) == {"induction", "previous_token", "duplicate_token", "gating"}
    assert set(families["IOI logit difference"]) == {"name_mover", "negative_name_mover", "s_inhibition"}
    assert set(families["memory vs context"]) == {"memory", "context"}
    assert set(families["attribute log-prob"]) == {"subject", "relation", "mixed"}
    assert set(families[""]) == {"positional", "syntactic", "subword_merge", "rare_words", "attention_sink"}
    assert set(same_metric("memory")) == {"memory", "context"} and same_metric("positional") == ()


def test_register_refuses_an_undeclared_evidence_or_metric_family():
    def run(m, cfg):
        raise AssertionError

    kw = dict(stage="ICI", method="m", summary="s", citation="c", run=run, no_causal="pattern")
    with pytest.raises(InputError, match="evidence must be one of"):
        register(Detector(name="tmp_bad_ev", evidence="vibes", **kw))
    with pytest.raises(InputError, match="unknown metric family"):
        register(Detector(name="tmp_bad_fam", evidence="pattern", metric="repeat-loss", **kw))
    with pytest.raises(InputError, match="no metric family"):
        register(Detector(name="tmp_no_fam", evidence="pattern", stage="ICI", method="m", summary="s", citation="c",
                          run=run, causal=lambda m, c, r: None))
    assert "tmp_bad_ev" not in names() and "tmp_bad_fam" not in names()


@pytest.mark.parametrize("name", NAMES)
def test_random_weight_models_get_no_labels(random_scans, name):
    ran, reasons = 0, []
    for label, atlas in random_scans.items():
        r = atlas.result(name)
        if r.skipped:
            reasons.append(r.skipped)
            assert r.labelled == [] and r.skipped.strip()
            continue
        ran += 1
        assert r.labelled == [], f"{name} labelled {r.labelled} on random-weight model {label}"
        finite = np.isfinite(r.p_value)
        assert finite.any(), f"{name} produced no p-values on {label}"
        assert ((r.p_value[finite] > 0) & (r.p_value[finite] <= 1)).all()
        assert (r.q_value[finite] >= r.p_value[finite] - 1e-12).all()
        assert r.n_null > 0 and r.rule.fdr == pytest.approx(0.05)
    # a detector may refuse every random model only for a stated behavioural reason: the behaviour it
    # needs is absent ("not found: ..."; e.g. retrieval keeps only prompts whose needle the model recalls,
    # as Wu et al. do, and a random model recalls none; function vectors need tasks the model does in context)
    # Otherwise the reason must be that the data do not fit the tokenizer (authored words that are not
    # single tokens of the toy vocabularies); such detectors test random weights in their own files on a
    # tokenizer trained for their data (e.g. tests/test_icl.py).
    def behavioural(why: str) -> bool:
        return why.startswith(NOT_FOUND) or "recalled" in why

    def data_fit(why: str) -> bool:
        return any(k in why for k in ("English", "single token", "tokenizer"))

    assert ran >= 1 or all(behavioural(why) or data_fit(why) for why in reasons), \
        f"{name} skipped on every random model: {reasons}"


def test_same_seed_gives_bit_identical_results_and_json_round_trips(tmp_path):
    spec = english_tiny_model(seed=0)
    a = headatlas.scan(spec, "all", seed=3, quick=True, causal=False)
    b = headatlas.scan(spec, "all", seed=3, quick=True, causal=False)
    path = a.save(tmp_path / "atlas.json")
    c = Atlas.load(path)
    for name in NAMES:
        ra, rb, rc = a.result(name), b.result(name), c.result(name)
        for key in PER_HEAD_FIELDS:
            np.testing.assert_array_equal(getattr(ra, key), getattr(rb, key), err_msg=f"{name}.{key}")
            np.testing.assert_array_equal(getattr(ra, key), getattr(rc, key), err_msg=f"{name}.{key} (JSON)")
        assert ra.labelled == rb.labelled == rc.labelled
        assert ra.rule == rc.rule and ra.causal == rc.causal and ra.skipped == rc.skipped


def test_unknown_and_duplicate_names_are_clear_errors():
    with pytest.raises(InputError, match="unknown detector 'nope'"):
        get("nope")
    with pytest.raises(ValueError, match="already registered"):
        register(get(NAMES[0]))
    with pytest.raises(ValueError, match="causal check or a no_causal reason"):
        register(Detector(name="_no_check", evidence="pattern", stage="ICI", method="m", summary="s", citation="c", run=lambda m, c: None))


def _fake(name: str, requires: tuple[str, ...] = ()) -> Detector:
    return Detector(name=name, evidence="pattern", stage="ICI", method="m", summary="s", citation="c", run=lambda m, c: None,
                    requires=requires, no_causal="test detector")


def test_scan_order_puts_requirements_first_and_refuses_cycles():
    register(_fake("_t_a", ("_t_b",)))
    register(_fake("_t_b", ("_t_c",)))
    register(_fake("_t_c"))
    register(_fake("_t_x", ("_t_y",)))
    register(_fake("_t_y", ("_t_x",)))
    try:
        assert scan_order(["_t_a"]) == ["_t_c", "_t_b", "_t_a"]
        assert scan_order(["_t_c", "_t_a"]) == ["_t_c", "_t_b", "_t_a"]
        with pytest.raises(InputError, match="cycle"):
            scan_order(["_t_x"])
    finally:
        for n in ("_t_a", "_t_b", "_t_c", "_t_x", "_t_y"):
            unregister(n)


def test_required_results_are_passed_to_later_detectors():
    seen = {}

    def second(m, cfg: ScanConfig):
        seen["first"] = cfg.result("previous_token")
        return get("previous_token").run(m, cfg).__class__(**{**seen["first"].__dict__, "name": "_t_second"})

    from headatlas.detectors.patterns.synthetic import SYNTHETIC

    register(Detector(name="_t_second", evidence="pattern", stage="ICI", method="m", summary="s", citation="c", run=second,
                      requires=("previous_token",), uses=(SYNTHETIC,), no_causal="test detector"))
    try:
        atlas = headatlas.scan(tiny_model("llama"), ["_t_second"], quick=True, causal=False)
        assert atlas.detectors == ["previous_token", "_t_second"]
        assert seen["first"] is atlas.result("previous_token")
        assert "reused shared pass 'synthetic'" in atlas.shared_passes.get("_t_second", "")
    finally:
        unregister("_t_second")


# ------------------------------------------------------------------------------- statistics

def test_signflip_null_and_labels_on_planted_effects():
    rng = np.random.default_rng(0)
    L, B, H = 3, 16, 5
    d = rng.normal(0, 0.05, size=(L, B, H))
    d[1, :, 2] += 0.5                      # a real effect
    d[2, :, 4] += 0.02                     # significant but below the rule's minimum effect
    rule = LabelRule(statistic="t", min_effect=0.1)
    draws = stats.signflip_null(d, rng=stats.rng_for(0, "t"))
    t = stats.evaluate(d, draws, rule, seed=0, salt="t", scores=d.mean(1))
    assert t.labelled == [(1, 2)]
    assert t.p_value[1, 2] == pytest.approx(1 / 10000, abs=5e-4)
    assert t.ci_low[1, 2] > 0.4 and t.ci_high[1, 2] < 0.6 and t.stability[1, 2] > 0.9
    assert np.nanmedian(t.p_value) > 0.2        # null heads get spread-out p-values


def test_best_of_statistic_takes_the_same_max_in_the_null():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, size=(2, 12, 3, 10))   # 10 candidates, no real effect anywhere
    rule = LabelRule(statistic="t")
    draws_max = stats.signflip_null(x, 999, rng=stats.rng_for(0, "a"))
    t = stats.evaluate(x, draws_max, rule, seed=0, salt="a", scores=stats.mean_over_prompts(x))
    assert t.labelled == []
    # taking the best of 10 against a single-candidate null would look significant: the max-null prevents it
    naive = stats.signflip_null(x[..., 0], 999, rng=stats.rng_for(0, "b"))
    p_naive = stats.permutation_p(stats.mean_over_prompts(x), naive, "greater")
    assert np.nanmedian(p_naive) < np.nanmedian(t.p_value)


def test_negative_heads_are_labelled_with_a_less_rule():
    rng = np.random.default_rng(2)
    d = rng.normal(0, 0.05, size=(2, 16, 4))
    d[0, :, 1] -= 0.4
    rule = LabelRule(statistic="t", direction="less", min_effect=0.1)
    t = stats.evaluate(d, stats.signflip_null(d, rng=stats.rng_for(0, "n")), rule, seed=0, salt="n",
                       scores=d.mean(1))
    assert t.labelled == [(0, 1)]


def test_a_degenerate_null_never_labels_and_is_reported():
    d = np.zeros((1, 16, 2))
    d[0, :, 0] = 0.5                           # constant effect: the sign-flip null is not degenerate
    rule = LabelRule(statistic="t", min_effect=0.1)
    draws = np.zeros((999, 1, 2))              # a null that cannot be non-zero
    t = stats.evaluate(d, draws, rule, seed=0, salt="d", scores=d.mean(1))
    assert t.labelled == [] and (0, 0) in t.degenerate


def test_random_slot_null_matches_its_definition():
    rng = np.random.default_rng(3)
    x = rng.random((1, 4, 1, 3))
    c = stats.slot_contrast(x)
    np.testing.assert_allclose(c[..., 0], x[..., 0] - x[..., 1:].mean(-1))
    draws = stats.random_slot_null(c, 2000, rng=stats.rng_for(0, "s"))
    # every draw is a mean over prompts of one of each prompt's slot contrasts
    assert draws.min() >= c.min(-1).mean() - 1e-12 and draws.max() <= c.max(-1).mean() + 1e-12


def test_default_set_and_all():
    from headatlas.detectors import default_names
    from headatlas.scan import resolve_detectors

    assert resolve_detectors(None) == list(default_names())
    assert resolve_detectors("all") == list(names())
    assert set(default_names()) <= set(names())
    tmp = Detector(name="_not_default", evidence="pattern", stage="LR", method="m", summary="s", citation="c",
                   run=lambda m, c: None, no_causal="test", default=False)  # type: ignore[arg-type,return-value]
    register(tmp)
    try:
        assert "_not_default" not in resolve_detectors(None)
        assert "_not_default" in resolve_detectors("all")
    finally:
        unregister("_not_default")


def test_the_architecture_doc_example_runs():
    """docs/architecture.md's worked example (its first python block) registers a detector that scans a tiny
    random model: one finite score per head, a real null (p in (0, 1]), and no label on random weights."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "register(Detector(" in block
    try:
        exec(compile(block, "docs/architecture.md", "exec"), {"__name__": "architecture_example"})
        det = get("current_token")
        assert det.evidence == "pattern" and det.metric == "" and det.no_causal
        atlas = headatlas.scan(tiny_model("llama"), ["current_token"], quick=True)
        r = atlas.result("current_token")
        assert r.scores.shape == (3, 4) and np.isfinite(r.scores).all() and np.isfinite(r.effect).all()
        assert ((r.p_value > 0) & (r.p_value <= 1)).all()
        assert atlas.labelled("current_token") == []
        assert "current_token [ICI]: none found (best" in atlas.summary()
    finally:
        unregister("current_token")
