"""Models larger than one device: ``load(..., device_map=..., max_memory=..., offload_folder=...)``.

No GPU here: a tiny random Llama saved to a folder is split across "cpu" and disk offload (weights
on ``meta`` between uses, read back from ``offload_folder`` by accelerate's hooks), and every read
and write of a head must give what the unsplit model gives.
"""

from __future__ import annotations

import pytest
import torch

import headatlas
from headatlas.errors import HeadAtlasError, InputError
from headatlas.instrument import Taps, instrumented, patch, set_value, zero
from headatlas.instrument.edits import add
from tiny import N_CTX, random_ids, save_tiny_folder, tiny_model

SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
         "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "disk"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_folder(path, "llama", seed=0)
    return path


@pytest.fixture(scope="module")
def plain(folder):
    return headatlas.load(folder, device="cpu")


@pytest.fixture(scope="module")
def split(folder, tmp_path_factory):
    return headatlas.load(folder, device_map=SPLIT, offload_folder=tmp_path_factory.mktemp("offload"))


def _offloaded(m) -> list[str]:
    return [n for n, p in m.model.named_parameters() if p.device.type == "meta"]


def test_split_model_is_really_offloaded_and_reports_where_inputs_go(split):
    off = _offloaded(split)
    assert any(n.startswith("model.layers.1.") for n in off) and any(n.startswith("model.layers.2.") for n in off)
    assert not any(n.startswith("model.layers.0.") for n in off)
    # the readout is kept on its execution device even where the map offloads it: detectors read its weights
    assert not any(n.startswith(("lm_head", "model.norm")) for n in off)
    assert split.model.lm_head.weight.device.type == "cpu"
    assert split.device == torch.device("cpu")          # the input embedding's device, never "meta"
    assert split.device_map == SPLIT
    assert split.info.device == "cpu"


def test_split_logits_equal_plain_logits(split, plain):
    ids = random_ids(2, 12)
    with torch.no_grad():
        a, b = plain.model(ids).logits, split.model(ids).logits
    assert torch.equal(a, b)


def test_offloaded_W_O_is_the_real_weight(split, plain):
    for layer in (0, 1, 2):
        w = split.W_O(layer)
        assert w.device.type == "cpu" and w.shape == (4, 16, 64)
        assert torch.equal(w, plain.W_O(layer).detach())
    assert _offloaded(split)  # reading W_O did not leave the weights materialised


def test_taps_and_edits_match_the_unsplit_model(split, plain):
    ids = random_ids(2, 12, seed=3)
    corrupt = random_ids(2, 12, seed=4)
    out = {}
    for key, m in (("plain", plain), ("split", split)):
        with torch.no_grad():
            with instrumented(m, taps=Taps(z=True)) as src:
                m.model(corrupt)
            edits = [zero(1, [0, 2]), patch(2, [1, 3], src.z(2)), set_value(0, 1, torch.ones(16))]
            with instrumented(m, edits=edits, taps=Taps(z=True, pattern=True)) as rec:
                logits = m.model(ids).logits
        out[key] = (logits, [rec.z(layer) for layer in range(3)], rec.pattern(2), src.z(2))
    (la, za, pa, _), (lb, zb, pb, source) = out["plain"], out["split"]
    assert torch.equal(la, lb)
    for a, b in zip(za, zb):
        assert b.device.type == "cpu" and b.dtype == torch.float32 and torch.equal(a, b)
    assert torch.equal(pa, pb)
    assert torch.all(zb[1][:, :, [0, 2]] == 0)
    assert torch.equal(zb[2][:, :, [1, 3]], source[:, :, [1, 3]])        # patched from the other run
    assert not torch.equal(zb[2][:, :, [0, 2]], source[:, :, [0, 2]])


def test_methods_on_a_split_model(split, plain):
    ids = random_ids(2, 10, seed=5)
    corrupt = random_ids(2, 10, seed=6)
    a = headatlas.ablate_heads(plain, [(1, 0), (2, 3)], ids)
    b = headatlas.ablate_heads(split, [(1, 0), (2, 3)], ids)
    assert torch.allclose(a, b, atol=1e-5)
    pa = headatlas.patch_heads(plain, ids, corrupt, answer=5, wrong=6)
    pb = headatlas.patch_heads(split, ids, corrupt, answer=5, wrong=6)
    assert pb.shape == (3, 4)
    assert abs(pa - pb).max() < 1e-4


def test_auto_device_map_with_a_small_cpu_budget_offloads_to_disk(folder, plain, tmp_path):
    m = headatlas.load(folder, device_map="auto", max_memory={"cpu": "60KB"}, offload_folder=tmp_path / "off")
    assert "disk" in set(m.device_map.values())
    ids = random_ids(1, 8)
    with torch.no_grad():
        assert torch.equal(m.model(ids).logits, plain.model(ids).logits)


def test_a_loaded_pair_is_dispatched_by_accelerate(plain, tmp_path):
    model, tok = tiny_model("llama", seed=0)
    m = headatlas.load((model, tok), device_map=SPLIT, offload_folder=tmp_path / "off")
    assert _offloaded(m) and m.device == torch.device("cpu")
    ids = random_ids(2, 12)
    with torch.no_grad():
        assert torch.equal(m.model(ids).logits, plain.model(ids).logits)


def test_bf16_end_to_end(folder, tmp_path):
    m = headatlas.load(folder, dtype="bf16", device_map=SPLIT, offload_folder=tmp_path / "off")
    ref = headatlas.load(folder, dtype="bf16", device="cpu")
    assert m.dtype == torch.bfloat16 and m.info.dtype == "bfloat16"
    ids = random_ids(2, 16, seed=7)
    corrupt = random_ids(2, 16, seed=8)
    results = []
    for mm in (ref, m):
        seen: list[torch.Tensor] = []

        def reducer(layer, pattern, call):  # a scan-like per-layer reduction: the previous-token score
            seen.append(pattern)
            return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).float().mean(dim=(0, 2))

        with torch.no_grad():
            with instrumented(mm, taps=Taps(z=True)) as src:
                mm.model(corrupt)
            steer = torch.randn(16, generator=torch.Generator().manual_seed(0))  # float32 into a bf16 model
            edits = [zero(0, 1), patch(1, [0, 1], src.z(1)), add(2, 2, steer), set_value(2, 0, steer)]
            with instrumented(mm, edits=edits, taps=Taps(z=True, reducer=reducer)) as rec:
                logits = mm.model(ids).logits
        assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
        assert all(p.dtype == torch.bfloat16 for p in seen)       # patterns are computed in bf16, not upcast
        assert rec.z(1).dtype == torch.float32                     # recordings are float32 copies
        assert torch.equal(rec.z(1)[:, :, [0, 1]], src.z(1)[:, :, [0, 1]])
        results.append((logits, torch.stack([rec.reduced[layer][0] for layer in range(3)])))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert headatlas.ablate_heads(m, [(1, 2)], ids).dtype in (torch.bfloat16, torch.float32)


@pytest.mark.parametrize("kwargs, match", [
    ({"device_map": "everywhere"}, "use one of auto"),
    ({"device_map": 3}, "device_map must be"),
    ({"device_map": {}}, "empty dict"),
    ({"device_map": {"": "meta"}}, "'meta' holds no weights"),
    ({"device_map": {"": "disk"}}, "no offload_folder"),
    ({"device_map": {"": "tpu9"}}, "unknown device|not supported"),
    ({"device_map": {"": 1.5}}, "a device must be"),
    ({"device_map": "auto", "device": "cpu"}, "either device or device_map"),
    ({"max_memory": {"cpu": "1GiB"}}, "only apply with device_map"),
    ({"offload_folder": "/tmp/x"}, "only apply with device_map"),
    ({"device_map": "auto", "max_memory": {"cpu": "lots"}}, "bytes"),
    ({"device_map": "auto", "max_memory": {"gpu0": "1GiB"}}, "max_memory key"),
    ({"device_map": "auto", "max_memory": []}, "must be a dict"),
])
def test_bad_placement_arguments_are_refused_before_loading(folder, kwargs, match):
    with pytest.raises(InputError, match=match):
        headatlas.load(folder, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_gpu_in_the_map_without_a_gpu_is_refused(folder):
    with pytest.raises(InputError, match="no CUDA GPU"):
        headatlas.load(folder, device_map={"": 0})
    with pytest.raises(InputError, match="no CUDA GPU"):
        headatlas.load(folder, device_map={"": "cuda:1"})


def test_a_map_must_name_real_modules_and_cover_every_weight(folder, tmp_path):
    with pytest.raises(InputError, match="does not have: 'model.layer.0'"):
        headatlas.load(folder, device_map={"model.layer.0": "cpu", "": "cpu"})
    with pytest.raises(InputError, match="places no device"):
        headatlas.load(folder, device_map={"model.layers.0": "cpu"})
    model, tok = tiny_model("llama")
    with pytest.raises(InputError, match="places no device"):  # the dispatch path checks it as well
        headatlas.load((model, tok), device_map={"model.layers.0": "cpu"})


def test_revision_is_for_hub_ids_only(folder):
    with pytest.raises(InputError, match="local path"):
        headatlas.load(folder, revision="step1000")
    with pytest.raises(InputError, match="bundled model"):
        headatlas.load("smollm2-135m", revision="main")
    with pytest.raises(InputError, match="non-empty string"):
        headatlas.load(folder, revision="")
    assert issubclass(InputError, HeadAtlasError)


def test_context_fits(split):
    assert split.info.n_ctx == N_CTX


def test_a_scan_of_a_model_with_layers_on_disk_equals_the_plain_scan(folder, plain, tmp_path):
    m = headatlas.load(folder, device_map={**SPLIT, "model.norm": "disk"}, offload_folder=tmp_path / "off")
    assert _offloaded(m)
    a = headatlas.scan(m, "induction", quick=True, n_prompts=4)
    b = headatlas.scan(plain, "induction", quick=True, n_prompts=4)
    assert a.model["fingerprint"] == b.model["fingerprint"]     # offloaded weights are read back for it
    assert (a.scores("induction") == b.scores("induction")).all()
    assert a.labelled("induction") == b.labelled("induction")
