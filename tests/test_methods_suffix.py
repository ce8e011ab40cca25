"""models/suffix.py: running a suffix of decoder layers from a cached residual stream is exact."""

from __future__ import annotations

import pytest
import torch

import headatlas
from headatlas.instrument import Taps, instrumented, zero
from headatlas.models.suffix import capture_layer_inputs, decoder_layers, run_from_layer, supports_suffix
from tiny import KINDS, random_ids, tiny_model


@pytest.fixture(params=KINDS, scope="module")
def loaded(request):
    return headatlas.load(tiny_model(request.param), device="cpu")


def test_run_from_any_layer_equals_full_forward(loaded):
    ids = random_ids(3, 20)  # longer than the Gemma 3 sliding window
    assert supports_suffix(loaded) and len(decoder_layers(loaded)) == loaded.info.n_layers
    with torch.no_grad(), capture_layer_inputs(loaded) as hidden:
        full = loaded.model(ids).logits
    for layer in range(loaded.info.n_layers):
        with torch.no_grad():
            last = run_from_layer(loaded, hidden[layer], layer, ids)
            every = run_from_layer(loaded, hidden[layer], layer, ids, last_only=False)
        assert last.shape == (3, 1, loaded.info.vocab_size)
        assert torch.equal(every, full)
        assert (last[:, -1] - full[:, -1]).abs().max() <= 1e-5
    # layers are restored afterwards
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, full)


def test_suffix_run_with_edit_equals_full_edited_forward(loaded):
    ids = random_ids(2, 16, seed=3)
    with torch.no_grad(), capture_layer_inputs(loaded) as hidden:
        loaded.model(ids)
    layer = loaded.info.n_layers - 2
    with torch.no_grad(), instrumented(loaded, edits=[zero(layer, [1])], taps=Taps(z=True)) as rec:
        full = loaded.model(ids).logits
    with torch.no_grad(), instrumented(loaded, edits=[zero(layer, [1])], taps=Taps(z=True)) as rec2:
        part = run_from_layer(loaded, hidden[layer], layer, ids, last_only=False)
    assert torch.equal(part, full)
    assert rec2.layers_seen == set(range(layer, loaded.info.n_layers))  # skipped layers never ran attention
    assert torch.equal(rec2.z(layer), rec.z(layer))


def test_bad_arguments_are_refused(loaded):
    ids = random_ids(2, 8)
    with torch.no_grad(), capture_layer_inputs(loaded) as hidden:
        loaded.model(ids)
    with pytest.raises(ValueError):
        run_from_layer(loaded, hidden[0], loaded.info.n_layers, ids)
    with pytest.raises(ValueError):
        run_from_layer(loaded, hidden[0][:1], 0, ids)
