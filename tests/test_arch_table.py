"""The architecture table (models/arch.py) and the z reducer tap."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import tiny_model

import headatlas
from headatlas.errors import UnsupportedArchitectureError
from headatlas.instrument import Taps, instrumented
from headatlas.models import arch

KINDS = ("llama", "gpt2", "gemma3", "qwen2")


@pytest.mark.parametrize("kind", KINDS)
def test_every_tested_architecture_resolves_its_table_row(kind):
    m = headatlas.load(tiny_model(kind))
    spec = m.layout.spec
    assert spec is not None and spec.model_type == m.info.model_type
    assert m.final_norm() is not None and m.layout.unembed is m.model.get_output_embeddings()
    for part in (spec.q, spec.k, spec.v, spec.o):
        assert hasattr(m.layout.attention_modules[0], part)


def test_a_wrong_table_row_fails_loudly(monkeypatch):
    hf, tok = tiny_model("llama")
    bad = dataclasses.replace(arch.ARCHS["llama"], final_norm="model.no_such_norm")
    monkeypatch.setitem(arch.ARCHS, "llama", bad)
    with pytest.raises(UnsupportedArchitectureError, match="final norm is not at 'model.no_such_norm'"):
        headatlas.load((hf, tok))


def test_z_reducer_sees_the_edited_head_outputs():
    m = headatlas.load(tiny_model("llama"))
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    taps = Taps(z=True, z_reducer=lambda layer, z, call: z[:, -1].mean(0))        # [H, d_head] per layer
    with torch.no_grad(), instrumented(m, taps=taps) as rec:
        m.model(ids)
    for layer in range(m.info.n_layers):
        torch.testing.assert_close(rec.z_reduced[layer][0], rec.z(layer)[:, -1].mean(0))
    with pytest.raises(headatlas.HeadAtlasError, match="z_reducer"):
        Taps(z_reducer=5)
