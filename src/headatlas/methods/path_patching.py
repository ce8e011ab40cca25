"""Path patching (Wang et al. 2022, the IOI paper): the effect of a sender head on chosen receiver heads
through their query, key or value input only.

For a sender ``s`` and receivers ``R`` (in later layers):

1. clean and corrupted runs give every head's output ``z``;
2. a clean run where the sender takes its corrupted ``z`` and every other head is frozen to its clean ``z``
   (MLPs recompute) gives the receivers' queries / keys / values as the sender's change alone makes them;
3. a clean run where each receiver's attention is recomputed with the chosen input(s) (``q``, ``k`` and/or
   ``v``) from step 2 and the others from the clean run gives the metric.

Step 3 recomputes the receivers' attention with the layer's own attention function, mask and arguments
(``LayerCall.attend``), so softcapping, sliding windows and sinks stay the model's. With
grouped-query attention, a receiver's key/value input is its own: siblings sharing the kv head keep theirs.
Many senders run at once, one sender per batch row, and each run starts at the first layer it can change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..checks import check_count
from ..errors import InputError, InputTypeError, UnsupportedArchitectureError
from ..instrument import Edit, HeadEdit, RowHeadPatch, Taps, instrumented
from ..instrument.session import LayerCall
from ..models.loading import LoadedModel
from ..models.suffix import capture_layer_inputs, run_from_layer, supports_suffix
from .engine import logits_of, max_rows
from .inputs import Heads, Prompts, as_loaded, check_heads, encode_pair, token_ids
from .metrics import Metric, logit_diff

_COMPONENTS = ("q", "k", "v")


def _check_via(via: str | Sequence[str]) -> tuple[str, ...]:
    if not isinstance(via, (str, list, tuple)):
        raise InputTypeError(f"via must be made of q, k and v (e.g. 'q', 'kv'), got {type(via).__name__}")
    parts = tuple(via) if not isinstance(via, str) else tuple(c for c in via.replace(",", "") if c.strip())
    if not parts or any(c not in _COMPONENTS for c in parts):
        raise InputError(f"via must be made of q, k and v (e.g. 'q', 'kv'), got {via!r}")
    return tuple(sorted(set(parts), key=_COMPONENTS.index))


@dataclass(eq=False)
class ReceiverInputPatch:
    """Recompute the output of ``heads`` of ``layer`` with their ``via`` inputs taken from ``source``
    (``{"q": [N, H, S, d], "k": [N, KV, S, d], "v": ...}``, row ``i`` of the source for batch row ``i``),
    through the layer's own attention function, mask and arguments (``LayerCall.attend``)."""

    layer: int
    heads: list[int]
    via: tuple[str, ...]
    source: dict[str, torch.Tensor]

    def apply(self, z: torch.Tensor, call: LayerCall) -> torch.Tensor:
        if call.output_transformed:
            raise UnsupportedArchitectureError(
                f"layer {self.layer} changes its attention output before the output projection (an output gate): "
                "recomputing a receiver's attention would leave out the gate, so path patching is not supported here")
        group = call.query.shape[1] // call.key.shape[1]
        q, k, v = call.query.clone(), call.key.clone(), call.value.clone()
        kv_heads = sorted({h // group for h in self.heads})
        src = {c: t.to(q.device, q.dtype) for c, t in self.source.items()}
        if "q" in self.via:
            q[:, self.heads] = src["q"][:, self.heads]
        if "k" in self.via:
            k[:, kv_heads] = src["k"][:, kv_heads]
        if "v" in self.via:
            v[:, kv_heads] = src["v"][:, kv_heads]
        new = call.attend(q, k, v)  # [N, S, H, d]
        z[:, :, self.heads] = new[:, :, self.heads].to(z.dtype)
        return z


@dataclass
class PathPatchResult:
    """``values [n_layers, n_heads]``: batch-mean metric with sender ``(l, h)`` path-patched to the
    receivers (NaN where ``(l, h)`` is not a sender); ``clean_metric``/``corrupted_metric`` baselines."""

    values: np.ndarray
    clean_metric: float
    corrupted_metric: float
    receivers: list[tuple[int, int]]
    via: tuple[str, ...]

    def normalized(self) -> np.ndarray:
        """(patched - clean) / (corrupted - clean): 1 = the sender's path carries the whole effect."""
        return (self.values - self.clean_metric) / (self.corrupted_metric - self.clean_metric)


def path_patch(model: Any, clean: Prompts, corrupted: Prompts, receivers: Heads, answer: Any = None,
               wrong: Any = None, *, via: str | Sequence[str] = "q", senders: Heads | None = None,
               metric: Metric | None = None, batch_size: int | None = None) -> PathPatchResult:
    """Path-patch each sender (default: every head in a layer before the last receiver's layer) to the
    ``receivers`` through their ``via`` input(s), in the clean run, from the corrupted run."""
    m = as_loaded(model)
    recv = check_heads(m, receivers)
    comps = _check_via(via)
    clean_ids, corr_ids = encode_pair(m, clean, corrupted)
    B, S = clean_ids.shape
    if metric is not None and not isinstance(metric, Metric):
        raise InputTypeError(f"metric must be a headatlas Metric (logit_diff, logprob, user_metric(fn)), got "
                             f"{type(metric).__name__}")
    if metric is None:
        if answer is None or wrong is None:
            raise InputError("give answer and wrong (tokens whose logit difference is measured), or a metric")
        metric = logit_diff(token_ids(m, answer, B, "answer"), token_ids(m, wrong, B, "wrong answer"))
    recv_layers = sorted({layer for layer, _ in recv})
    last_recv = recv_layers[-1]
    if last_recv == 0:
        raise InputError("receivers are all in layer 0, where no earlier head can send to them; choose receivers in "
                         "layer 1 or later")
    if batch_size is not None:
        batch_size = check_count(batch_size, "batch_size")
    if senders is None:
        send = [(layer, h) for layer in m.info.attention_layers if layer < last_recv for h in range(m.info.n_heads)]
    else:
        send = check_heads(m, senders)
    for layer, h in send:
        if layer >= last_recv:
            raise InputError(f"sender L{layer}H{h} is not before the receivers' last layer {last_recv}")
    L, attn = m.info.n_layers, m.info.attention_layers
    with torch.no_grad():
        with instrumented(m, taps=Taps(z=True)) as rec:
            corr_metric = metric(logits_of(m, corr_ids, metric.last_only))
            z_corr = [rec.z(l) if l in attn else None for l in range(L)]
        suffix = supports_suffix(m)
        with instrumented(m, taps=Taps(z=True)) as rec:
            if suffix:
                with capture_layer_inputs(m) as store:
                    clean_metric = metric(logits_of(m, clean_ids, metric.last_only))
                hidden = list(store)
            else:
                clean_metric = metric(logits_of(m, clean_ids, metric.last_only))
                hidden = None
            z_clean = [rec.z(l) if l in attn else None for l in range(L)]
    out = np.full((L, m.info.n_heads), np.nan)
    chunk = batch_size or max_rows(m, S, last_only=metric.last_only)
    recv_by_layer: dict[int, list[int]] = {}
    for layer, h in recv:
        recv_by_layer.setdefault(layer, []).append(h)
    per_sender = max(1, chunk // B)
    for s in range(0, len(send), per_sender):
        group = send[s:s + per_sender]
        vals = _run_senders(m, group, recv_by_layer, comps, clean_ids, corr_ids, z_clean, z_corr, hidden, metric)
        for (layer, h), v in zip(group, vals):
            out[layer, h] = v
    return PathPatchResult(out, float(clean_metric.mean()), float(corr_metric.mean()), recv, comps)


def _run(m: LoadedModel, ids: torch.Tensor, hidden: list | None, start: int, edits: list[Edit],
         taps: Taps | None, metric: Metric | None, rows: torch.Tensor, last_only: bool):
    with torch.no_grad(), instrumented(m, edits=edits, taps=taps) as rec:
        if hidden is not None:
            logits = run_from_layer(m, hidden[start][rows], start, ids, last_only=last_only)
        else:
            logits = logits_of(m, ids, last_only)
    return rec, (metric(logits, rows) if metric is not None else None)


def _run_senders(m: LoadedModel, senders: list[tuple[int, int]], recv_by_layer: dict[int, list[int]],
                 via: tuple[str, ...], clean_ids: torch.Tensor, corr_ids: torch.Tensor, z_clean: list, z_corr: list,
                 hidden: list | None, metric: Metric) -> list[float]:
    """Rows: sender-major, each sender with every prompt. Returns the batch-mean metric per sender."""
    B = clean_ids.shape[0]
    dev = m.device
    n = len(senders) * B
    rows = torch.arange(B, device=dev).repeat(len(senders))
    ids = clean_ids[rows]
    s_layers = torch.tensor([layer for layer, _ in senders], device=dev).repeat_interleave(B)
    s_heads = torch.tensor([h for _, h in senders], device=dev).repeat_interleave(B)
    first = min(layer for layer, _ in senders)
    last_recv = max(recv_by_layer)
    # step 2: sender from the corrupted run, every other head frozen to clean, receivers' q/k/v recorded
    edits: list[Edit] = []
    for layer in (la for la in m.info.attention_layers if first <= la < last_recv):
        edits.append(HeadEdit(layer, None, "patch", source=z_clean[layer], source_rows=rows))
        sel = (s_layers == layer).nonzero().reshape(-1)
        if sel.numel():
            edits.append(RowHeadPatch(layer=layer, rows=sel, heads=s_heads[sel], source=z_corr[layer],
                                      source_rows=rows[sel]))
    rec, _ = _run(m, ids, hidden, first, edits, Taps(qkv=True, layers=sorted(recv_by_layer)), None, rows, True)
    sources = {layer: {"q": rec.q(layer), "k": rec.k(layer), "v": rec.v(layer)} for layer in recv_by_layer}
    # step 3: clean run with the receivers' inputs patched
    patches: list[Edit] = [ReceiverInputPatch(layer, hs, via, sources[layer]) for layer, hs in recv_by_layer.items()]
    _, vals = _run(m, ids, hidden, min(recv_by_layer), patches, None, metric, rows, metric.last_only)
    return vals.reshape(len(senders), B).mean(1).tolist() if n else []
