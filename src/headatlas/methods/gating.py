"""Learned head gating: Causal Head Gating (Nam et al. 2025), after Voita et al. 2019's head gates.

One soft gate per head, ``G[l, h] = sigmoid(logit[l, h])``, multiplies the head's output ``z`` (the
input of the output projection) through the instrumentation (:class:`GateEdit`). The model is frozen;
Adam fits the gate logits on the task's next-token loss (mean over the target positions) plus a
regulariser on the clipped logits (the clipped inverse sigmoid of the gate):

    loss = NLL + lam * sum_{l,h} clip(logit[l, h], -CLIP, CLIP)     (toward 0: the G- fit)
    loss = NLL - lam * sum_{l,h} clip(logit[l, h], -CLIP, CLIP)     (toward 1: the G+ fit)

Both fits start from a fit with ``lam = 0`` (itself started at gates ~0.95 with a little seeded noise).
Per head (CHG's taxonomy, threshold 0.5 on the seed mean):

- **facilitating**: G- >= 0.5 (kept open even under pressure to close: removing it hurts the task);
- **interfering**: G+ < 0.5 (closed even under pressure to stay open: removing it helps);
- **irrelevant**: G+ >= 0.5 and G- < 0.5 (either way will do);
- **mixed**: G- >= 0.5 and G+ < 0.5 (the fits disagree; rare, reported rather than hidden).

``lam`` is in nats of mean task loss per unit of clipped logit, per head: a head stays open in the G-
fit when closing it would cost the task loss more than the regulariser pays for closing it.

>>> import headatlas
>>> m = headatlas.load("smollm2-135m")                                                  # doctest: +SKIP
>>> g = headatlas.gate(m, ids, targets=mask, n_seeds=3, steps=100)                      # doctest: +SKIP
>>> g.to_dataframe().sort_values("g_minus", ascending=False).head()                     # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..checks import check_bool, check_count
from ..errors import InputError, InputTypeError
from ..instrument import instrumented
from ..models.loading import LoadedModel
from .inputs import Prompts, as_loaded, encode

CLIP = 4.0            # the regulariser acts on logits in [-CLIP, CLIP] (gates 0.018 .. 0.982)
INIT_LOGIT = 3.0      # the lam = 0 fit starts at gates ~0.95
INIT_NOISE = 0.5      # seeded N(0, INIT_NOISE) on the starting logits: the seeds' spread
THRESHOLD = 0.5
CLASSES = ("facilitating", "interfering", "irrelevant", "mixed")


@dataclass(frozen=True, eq=False)
class GateEdit:
    """Multiplies every head's ``z [batch, seq, n_heads, d_head]`` in ``layer`` by ``gates``:
    ``[n_heads]`` (all rows) or ``[batch, n_heads]`` (one gate per batch row). Not in place, so
    gradients flow to ``gates`` (which may require grad)."""

    layer: int
    gates: torch.Tensor

    def apply(self, z: torch.Tensor, call: Any) -> torch.Tensor:
        g = self.gates.to(device=z.device, dtype=z.dtype)
        if g.dim() == 1:
            return z * g[None, None, :, None]
        return z * g[:, None, :, None]


def gate_edits(gates: torch.Tensor, layers: Sequence[int] | None = None) -> list[GateEdit]:
    """Edits for gates ``[n_layers, n_heads]`` or per row ``[batch, n_layers, n_heads]``, on ``layers``
    (default: all; a hybrid model's ``info.attention_layers``: its other layers have no heads to gate)."""
    n = gates.shape[0] if gates.dim() == 2 else gates.shape[1]
    use = range(n) if layers is None else layers
    if gates.dim() == 2:
        return [GateEdit(layer, gates[layer]) for layer in use]
    return [GateEdit(layer, gates[:, layer]) for layer in use]


@dataclass(frozen=True)
class GateResult:
    """What :func:`gate` measured (all gate arrays ``[n_seeds, n_layers, n_heads]``): the gates of both
    fits over seeds, their mean and spread, and CHG's class per head."""

    g_minus: np.ndarray          # the fit pushed toward 0 (G-)
    g_plus: np.ndarray           # the fit pushed toward 1 (G+)
    g_zero: np.ndarray           # the unregularised fit both start from
    loss_clean: float            # task loss of the intact model (nats per target token)
    loss_minus: np.ndarray       # [n_seeds] task loss at the end of each G- fit
    loss_plus: np.ndarray        # [n_seeds] task loss at the end of each G+ fit
    lam: float
    steps: int
    lr: float
    seed: int
    n_prompts: int
    n_targets: int
    trace_minus: np.ndarray = field(default_factory=lambda: np.zeros(0))   # [n_seeds, steps] loss during G-

    @property
    def minus(self) -> np.ndarray:
        """``[L, H]`` mean over seeds of G- (the facilitation score)."""
        return self.g_minus.mean(0)

    @property
    def plus(self) -> np.ndarray:
        """``[L, H]`` mean over seeds of G+ (low: interfering)."""
        return self.g_plus.mean(0)

    @property
    def minus_spread(self) -> np.ndarray:
        return self.g_minus.std(0)

    @property
    def plus_spread(self) -> np.ndarray:
        return self.g_plus.std(0)

    @property
    def classes(self) -> np.ndarray:
        """``[L, H]`` strings: facilitating / interfering / irrelevant / mixed (seed means, threshold 0.5)."""
        return classify(self.minus, self.plus)

    def heads(self, cls: str) -> list[tuple[int, int]]:
        """Heads of one class, sorted by layer and head."""
        if cls not in CLASSES:
            raise InputError(f"unknown gate class {cls!r}; use one of {', '.join(CLASSES)}")
        return [(int(a), int(b)) for a, b in zip(*np.nonzero(self.classes == cls))]

    def to_dataframe(self) -> Any:
        """One row per head: layer, head, g_minus, g_minus_std, g_plus, g_plus_std, class."""
        import pandas as pd

        L, H = self.minus.shape
        layer, head = np.divmod(np.arange(L * H), H)
        return pd.DataFrame({"layer": layer, "head": head, "g_minus": self.minus.reshape(-1),
                             "g_minus_std": self.minus_spread.reshape(-1), "g_plus": self.plus.reshape(-1),
                             "g_plus_std": self.plus_spread.reshape(-1), "class": self.classes.reshape(-1)})

    def summary(self) -> str:
        counts = {c: len(self.heads(c)) for c in CLASSES}
        return (f"gating over {self.n_prompts} prompts ({self.n_targets} target tokens), {self.g_minus.shape[0]} seeds, "
                f"{self.steps} steps per fit, lam={self.lam:g}: clean loss {self.loss_clean:.3f}, G- loss "
                f"{float(self.loss_minus.mean()):.3f}, G+ loss {float(self.loss_plus.mean()):.3f}; "
                + ", ".join(f"{v} {k}" for k, v in counts.items()))


def classify(minus: np.ndarray, plus: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """CHG classes from G- and G+ ``[L, H]`` (see the module docstring)."""
    keep, drop = minus >= threshold, plus < threshold
    out = np.full(minus.shape, "irrelevant", dtype=object)
    out[keep & ~drop] = "facilitating"
    out[drop & ~keep] = "interfering"
    out[keep & drop] = "mixed"
    return out


def target_mask(ids: torch.Tensor, targets: Any) -> torch.Tensor:
    """``[batch, seq - 1]`` bool: which next-token predictions count (position ``t`` predicts ``ids[:, t + 1]``).

    ``targets``: None (every token after the first), or a bool ``[seq]`` / ``[batch, seq]`` marking the
    TOKENS to predict (entry ``t`` True: predicting ``ids[:, t]`` from position ``t - 1`` counts)."""
    B, S = ids.shape
    if S < 2:
        raise InputError(f"gating needs prompts of at least 2 tokens (one to predict), got {S}")
    if targets is None:
        return torch.ones(B, S - 1, dtype=torch.bool)
    t = torch.as_tensor(targets)
    if t.dtype != torch.bool:
        raise InputTypeError(f"targets must be a bool mask [seq] or [batch, seq], got dtype {t.dtype}")
    if t.dim() == 1:
        t = t[None].expand(B, -1)
    if tuple(t.shape) != (B, S):
        raise InputError(f"targets must be [seq] = [{S}] or [batch, seq] = [{B}, {S}], got {tuple(t.shape)}")
    mask = t[:, 1:].cpu().clone()
    if not bool(mask.any()):
        raise InputError("targets mark no token after the first: nothing to predict")
    return mask


def per_prompt_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, *, reduce: bool = False) -> torch.Tensor:
    """``[batch]`` mean next-token loss over each prompt's target positions (logits ``[b, S, V]`` of the
    positions of ``ids [b, S]``; ``mask [b, S - 1]``); ``reduce``: one mean over every target token instead."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -lp.gather(-1, ids[:, 1:, None].to(lp.device))[..., 0]
    m = mask.to(nll.device, nll.dtype)
    if reduce:
        return (nll * m).sum() / m.sum()
    return (nll * m).sum(1) / m.sum(1).clamp_min(1.0)


def scored_positions(mask: torch.Tensor) -> torch.Tensor:
    """``[n]`` the positions whose prediction counts for some prompt (``mask [batch, seq - 1]``): the only
    positions a gate fit unembeds."""
    return torch.nonzero(mask.any(0))[:, 0]


def _fit_losses(m: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``[F]`` mean task loss (nats per target token) of each of ``F`` gate vectors ``gates [F, L, H]``
    (differentiable), all in one forward: fit ``f`` runs every prompt as batch rows ``f * B .. f * B + B - 1``
    with its own gates (one gate vector per row), and only the scored positions are unembedded."""
    F, B = gates.shape[0], ids.shape[0]
    keep = scored_positions(mask).to(ids.device)
    rows = ids[:, :int(keep[-1]) + 1].repeat(F, 1)          # [F * B, s]: no position after the last scored one
    with instrumented(m, edits=gate_edits(gates.repeat_interleave(B, dim=0), m.info.attention_layers)):
        logits = m.model(input_ids=rows, use_cache=False, logits_to_keep=keep).logits   # [F * B, n, V]
    lp = torch.log_softmax(logits.float(), -1)
    nll = -lp.gather(-1, ids[:, keep + 1].repeat(F, 1)[..., None])[..., 0]             # [F * B, n]
    w = mask[:, keep].to(nll.dtype).repeat(F, 1)
    return (nll * w).reshape(F, -1).sum(1) / w.reshape(F, -1).sum(1)


def _task_loss(m: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Mean task loss (nats per target token) of the model with ``gates`` ``[L, H]`` (differentiable)."""
    return _fit_losses(m, ids, mask, gates[None])[0]


def first_target(mask: torch.Tensor) -> int:
    """The first position whose prediction counts (``mask [batch, seq - 1]``): logits before it are not needed."""
    cols = torch.nonzero(mask.any(0))
    return int(cols[0]) if cols.numel() else 0


def _fit_rows(m: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, logits0: torch.Tensor, signs: torch.Tensor, *,
              lam: float, steps: int, lr: float, final: bool = True) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Adam on ``F`` independent gate fits at once, from logits ``logits0 [F, L, H]``: fit ``f`` minimises
    its task loss ``+ signs[f] * lam * sum clip(logit)`` (sign +1: G-, -1: G+, 0: unregularised), its
    prompts as its own batch rows of one forward (:func:`_fit_losses`). The objective is the sum over fits,
    so each fit's gradient is its own, and Adam is elementwise: the same fits as one at a time.
    ``(final logits [F, L, H], final task losses [F] (NaN without ``final``: no forward at the end),
    loss traces [F, steps])``."""
    theta = logits0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    sign = signs.to(theta.device, theta.dtype)
    trace = np.zeros((theta.shape[0], steps))
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        nll = _fit_losses(m, ids, mask, torch.sigmoid(theta))                          # [F]
        reg = theta.clamp(-CLIP, CLIP).sum((1, 2))                                     # [F]
        (nll + sign * lam * reg).sum().backward()
        opt.step()
        trace[:, step] = nll.detach().cpu().double().numpy()
    if not final:
        return theta.detach(), np.full(theta.shape[0], np.nan), trace
    with torch.no_grad():
        end = _fit_losses(m, ids, mask, torch.sigmoid(theta)).cpu().double().numpy()
    return theta.detach(), end, trace


def _fit_all(m: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, logits0: torch.Tensor, signs: torch.Tensor, *,
             lam: float, steps: int, lr: float, fits_per_pass: int, final: bool = True
             ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """:func:`_fit_rows` over groups of at most ``fits_per_pass`` fits (1: one fit at a time)."""
    parts = [_fit_rows(m, ids, mask, logits0[s:s + fits_per_pass], signs[s:s + fits_per_pass], lam=lam, steps=steps,
                       lr=lr, final=final) for s in range(0, logits0.shape[0], fits_per_pass)]
    return (torch.cat([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def fits_per_pass(m: LoadedModel, ids: torch.Tensor, n_fits: int) -> int:
    """How many gate fits share one forward: all of them while their rows (fits x prompts) stay within
    the engine's memory estimate for a pass that keeps activations for the backward, else fewer."""
    from .engine import max_rows

    cap = max(1, max_rows(m, ids.shape[1], last_only=False) // 4)     # the backward keeps ~4x the activations
    return max(1, min(n_fits, cap // max(1, ids.shape[0])))


def _frozen(m: LoadedModel):
    """Context: every parameter requires_grad False during the fit, restored after."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        params = list(m.model.parameters())
        before = [p.requires_grad for p in params]
        was_training = m.model.training
        try:
            for p in params:
                p.requires_grad_(False)
            m.model.eval()
            yield
        finally:
            for p, r in zip(params, before):
                p.requires_grad_(r)
            m.model.train(was_training)

    return ctx()


def gate(model: Any, prompts: Prompts, *, targets: Any = None, seed: int = 0, n_seeds: int = 3, steps: int = 60,
         lam: float = 0.01, lr: float = 0.25, init_steps: int | None = None, batch_fits: bool = True) -> GateResult:
    """Fit causal head gates on ``prompts`` (``[batch, seq]`` token ids, or strings of one token length).

    - ``targets``: bool ``[seq]`` / ``[batch, seq]`` marking the tokens whose prediction is the task (default:
      every token after the first);
    - ``n_seeds`` fits of each kind (seeded start noise; ``seed`` seeds them all);
    - ``steps`` Adam steps (learning rate ``lr``) per G- and G+ fit; the unregularised fit they start from
      takes ``init_steps`` (default ``steps // 2``): ``n_seeds * (init_steps + 2 * steps)`` forward+backward passes;
    - ``lam`` >= 0: the regulariser's weight (nats per unit clipped logit per head; module docstring);
    - ``batch_fits``: fit the seeds, and then every seed's G- and G+, as batch rows of one forward per step
      (one gate vector per row; :func:`fits_per_pass` caps the rows); False fits them one after another
      (the same gates to float tolerance, slower).

    Returns a :class:`GateResult` (gates ``[n_seeds, L, H]`` of both fits, classes, ``to_dataframe()``).
    """
    from .arguments import check_gate_args

    check_gate_args(prompts=prompts, targets=targets, seed=seed, n_seeds=n_seeds, steps=steps, lam=lam, lr=lr,
                    init_steps=init_steps)
    m = as_loaded(model)
    ids = encode(m, prompts, "gating prompts")
    mask = target_mask(ids, targets).to(ids.device)
    seed, n_seeds, steps, lam, lr = int(seed), int(n_seeds), int(steps), float(lam), float(lr)
    init_steps = steps // 2 if init_steps is None else int(init_steps)
    batch_fits = check_bool(batch_fits, "batch_fits")
    L, H = m.info.n_layers, m.info.n_heads
    with _frozen(m):
        with torch.no_grad():
            clean = float(_task_loss(m, ids, mask, torch.ones(L, H, device=ids.device)))
        if not math.isfinite(clean):
            raise InputError(f"the model's task loss on these prompts is {clean}; cannot fit gates")
        starts = torch.stack([INIT_LOGIT + INIT_NOISE * torch.randn(L, H, generator=torch.Generator().manual_seed(
            seed * 1000 + s)) for s in range(n_seeds)]).to(ids.device)                  # [n_seeds, L, H]
        per = fits_per_pass(m, ids, 2 * n_seeds) if batch_fits else 1
        base = starts
        if init_steps:
            base, _, _ = _fit_all(m, ids, mask, starts, torch.zeros(n_seeds), lam=0.0, steps=init_steps, lr=lr,
                                  fits_per_pass=min(per, n_seeds), final=False)
        # the G- fits (sign +1) and the G+ fits (sign -1) of every seed, as rows of the same passes
        signs = torch.cat([torch.ones(n_seeds), -torch.ones(n_seeds)])
        theta, losses, traces = _fit_all(m, ids, mask, torch.cat([base, base]), signs, lam=lam, steps=steps, lr=lr,
                                         fits_per_pass=per)
    g_zero = torch.sigmoid(base).cpu().double().numpy()
    g_minus = torch.sigmoid(theta[:n_seeds]).cpu().double().numpy()
    g_plus = torch.sigmoid(theta[n_seeds:]).cpu().double().numpy()
    loss_minus, loss_plus, trace = losses[:n_seeds], losses[n_seeds:], traces[:n_seeds]
    for g_arr in (g_minus, g_plus, g_zero):   # a hybrid's layers without heads have no gates
        g_arr[:, list(m.info.other_layers)] = np.nan
    return GateResult(g_minus=g_minus, g_plus=g_plus, g_zero=g_zero, loss_clean=clean, loss_minus=loss_minus,
                      loss_plus=loss_plus, lam=lam, steps=steps, lr=lr, seed=seed, n_prompts=int(ids.shape[0]),
                      n_targets=int(mask.sum()), trace_minus=trace)


def closing_effects(model: Any, ids: torch.Tensor, gates: Any, *, targets: Any = None,
                    batch_size: int = 8) -> np.ndarray:
    """``[L, B, H]`` first-order change of each prompt's task loss when one head's gate closes.

    At gates ``[L, H]`` (e.g. a G- fit), per prompt ``b`` and head ``(l, h)``:
    ``-gates[l, h] * d loss_b / d gate_{b, l, h}`` (the gradient through a per-row copy of the gates, so
    one backward pass gives every prompt's gradient). Positive: closing the head raises the loss."""
    m = as_loaded(model)
    ids = encode(m, ids, "gating prompts")
    mask = target_mask(ids, targets).to(ids.device)
    first = first_target(mask)
    G = torch.as_tensor(np.asarray(gates, dtype=np.float64), dtype=torch.float32)
    L, H = m.info.n_layers, m.info.n_heads
    if tuple(G.shape) != (L, H):
        raise InputError(f"gates must be [n_layers, n_heads] = [{L}, {H}], got {tuple(G.shape)}")
    check_count(batch_size, "batch_size")
    out = []
    with _frozen(m):
        for s in range(0, ids.shape[0], batch_size):
            rows = ids[s:s + batch_size]
            per_row = G.to(ids.device)[None].repeat(rows.shape[0], 1, 1).requires_grad_(True)
            with instrumented(m, edits=gate_edits(per_row, m.info.attention_layers)):
                logits = m.model(input_ids=rows, use_cache=False, logits_to_keep=rows.shape[1] - first).logits
            per_prompt_loss(logits, rows[:, first:], mask[s:s + batch_size, first:]).sum().backward()
            out.append((-per_row.detach() * per_row.grad).cpu().double().numpy())   # [b, L, H]
    return m.info.nan_other_layers(np.transpose(np.concatenate(out, 0), (1, 0, 2)))
