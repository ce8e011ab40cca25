"""``headatlas.compare(a, b)``: how the heads of two same-shaped models differ (a base and its fine-tune,
two checkpoints, a model and an edited copy).

Per head and detector it runs the same scan (same detectors, prompts and seed) on both models and reports
``score_a``, ``score_b``, ``delta`` and whether the change is significant; per head it also measures how
much the head's weights moved (:func:`weight_delta`) and how much its output moved on a fixed set of prompts
(:func:`activation_delta`). Two saved atlases can be compared without models (no weight/activation deltas).

Significance of a change (per detector, over its heads). With ``e`` the detector's effect (the statistic
its label rule tests, in score units), ``s_a, s_b`` the spreads of each model's null draws of it
(``null_std``) and ``[lo, hi]`` each model's 95 % bootstrap CI of the effect over prompts:

1. ``z = (e_b - e_a) / sqrt(s_a^2 + s_b^2)``: the change measured in the noise a head that does nothing
   shows on these prompts (both models' nulls). Two-sided normal p, Benjamini-Hochberg q over the heads
   of the detector (``q_change``).
2. The two bootstrap CIs are disjoint: the change exceeds the sampling noise of the prompts as well.

``significant = q_change <= fdr and CIs disjoint``. The first condition alone would call a tiny shift of a
head with a very tight null significant; the second alone ignores how far the null reaches; both are
cheap, need no extra forward passes, and hold exactly at ``e_b == e_a`` (a model compared with itself has
nothing significant). Both scans use the same prompts, so the test is conservative (the CIs ignore the
pairing). Where a detector gives no CI (NaN), condition 2 is dropped and the note says so.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .atlas import Atlas
from .atlas import schema
from .errors import AtlasFileError, InputError, InputTypeError

if TYPE_CHECKING:
    import pandas as pd

COMPARISON_SCHEMA = "headatlas.comparison/1"
PROJECTIONS = ("q", "k", "v", "o")
SHAPE_KEYS = ("n_layers", "n_heads", "n_kv_heads", "d_head", "d_head_qk")
FDR = 0.05
N_ACT_PROMPTS, ACT_LEN = 8, 32


# ----------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------
def _proj_names(m: Any) -> tuple[str, str, str, str]:
    spec = m.layout.spec
    if spec is not None:
        return spec.q, spec.k, spec.v, spec.o
    return "q_proj", "k_proj", "v_proj", m.layout.out_proj_name


def head_slices(m: Any, layer: int) -> dict[str, list[np.ndarray]]:
    """Per projection, the ``[n_heads]`` parameter slices of each query head of ``layer`` (float64 arrays).

    ``q``: the head's rows of W_Q (and of its bias); ``k``/``v``: the rows of the head's kv group (GQA: every
    query head of a group gets the same k/v slice); ``o``: the head's columns of W_O (the output bias is
    shared by all heads and left out). GPT-2's fused ``c_attn`` (Conv1D, ``[d_model, 3 d_model]``) is split
    into its q, k, v thirds."""
    import torch

    info = m.info
    H, KV, d, d_qk = info.n_heads, info.n_kv_heads, info.d_head, info.d_head_qk
    group = max(1, H // max(1, KV))
    module = m.layout.module(layer)
    qn, kn, vn, on = _proj_names(m)

    def weight_rows(name: str, part: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[out, in]`` rows (nn.Linear layout) of projection ``name`` and its bias (``part``: GPT-2 third)."""
        proj = getattr(module, name, None)
        if proj is None or getattr(proj, "weight", None) is None:
            raise InputError(f"{type(module).__name__} of layer {layer} has no projection {name!r}")
        w = proj.weight.detach()
        conv = type(proj).__name__ == "Conv1D"
        if conv:
            w = w.t()
        b = getattr(proj, "bias", None)
        b = None if b is None else b.detach()
        if part is not None:
            n = w.shape[0] // 3
            w = w[part * n:(part + 1) * n]
            b = None if b is None else b[part * n:(part + 1) * n]
        if w.device.type == "meta":
            raise InputError("weight deltas need the weights in memory; this model is offloaded (device_map with "
                             "'disk'); load it without offloading to compare weights")
        return w.to("cpu", torch.float64), (None if b is None else b.to("cpu", torch.float64))

    fused = qn == kn == vn
    out: dict[str, list[np.ndarray]] = {}
    for proj, name, part, n_rows_heads, width in (("q", qn, 0, H, d_qk), ("k", kn, 1, KV, d_qk), ("v", vn, 2, KV, d)):
        w, b = weight_rows(name, part if fused else None)
        slices = []
        for h in range(H):
            idx = h if n_rows_heads == H else h // group
            rows = w[idx * width:(idx + 1) * width]
            parts = [rows.reshape(-1)] + ([] if b is None else [b[idx * width:(idx + 1) * width]])
            slices.append(torch.cat(parts).numpy())
        out[proj] = slices
    wo, _ = weight_rows(on, None)    # [d_model, H * d]
    out["o"] = [wo[:, h * d:(h + 1) * d].reshape(-1).numpy() for h in range(H)]
    return out


def weight_delta(a: Any, b: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Relative Frobenius change of each head's weights from model ``a`` to model ``b``.

    Returns ``(total [n_layers, n_heads], {"q"|"k"|"v"|"o": [n_layers, n_heads]})`` where, with ``W_p`` a
    head's slice of projection ``p`` (:func:`head_slices`), ``parts[p] = ||W_p^b - W_p^a||_F / ||W_p^a||_F``
    and ``total = sqrt(sum_p ||dW_p||^2) / sqrt(sum_p ||W_p^a||^2)`` (the concatenated slices). GQA: a kv
    group's k/v change is attributed to every query head of the group. A slice that is zero in ``a``
    gives 0 when it is also zero in ``b``, else ``inf``. Exactly 0 for untouched heads (float64, no
    rounding: the difference of equal numbers)."""
    check_same_shape(a.info.to_dict(), b.info.to_dict(), str(a.source), str(b.source))
    L, H = a.info.n_layers, a.info.n_heads
    num = {p: np.full((L, H), np.nan) for p in PROJECTIONS}   # NaN rows: a hybrid's layers without heads
    den = {p: np.full((L, H), np.nan) for p in PROJECTIONS}
    for layer in a.info.attention_layers:
        sa, sb = head_slices(a, layer), head_slices(b, layer)
        for p in PROJECTIONS:
            for h in range(H):
                if sa[p][h].shape != sb[p][h].shape:
                    raise InputError(f"layer {layer} head {h}: the {p} slices differ in size "
                                     f"({sa[p][h].size} vs {sb[p][h].size}); the models are not the same architecture")
                num[p][layer, h] = float(np.sum((sb[p][h] - sa[p][h]) ** 2))
                den[p][layer, h] = float(np.sum(sa[p][h] ** 2))
    parts = {p: _ratio(np.sqrt(num[p]), np.sqrt(den[p])) for p in PROJECTIONS}
    total = _ratio(np.sqrt(sum(num.values())), np.sqrt(sum(den.values())))
    return total, parts


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.where(num == 0, 0.0, np.where(den == 0, np.inf, r))


# ----------------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------------
def activation_prompts(m: Any, *, n: int = N_ACT_PROMPTS, length: int = ACT_LEN, seed: int = 0) -> tuple[Any, str]:
    """``([n, S] token ids, description)``: the first ``n`` package sentences (``data/sentences.txt``), BOS
    first, cut to the shortest one's length (at most ``length`` tokens, so no padding is needed), when the
    tokenizer reads English; else seeded random non-special tokens of the vocabulary."""
    import torch

    from .tasks.text import check_english, sentences
    from .tasks.vocab import bos_id

    tok = m.tokenizer
    length = max(2, min(int(length), int(m.info.n_ctx)))
    try:
        check_english(tok)
        rows = [list(tok.encode(s, add_special_tokens=False)) for s in sentences()[: n]]
        bos = bos_id(tok)
        rows = [([bos] if bos is not None else []) + r for r in rows if r]
        S = min(length, min(len(r) for r in rows))
        ids = torch.tensor([r[:S] for r in rows], dtype=torch.long)
        return ids, f"the first {len(rows)} package sentences (data/sentences.txt), {S} tokens each"
    except InputError:
        g = torch.Generator().manual_seed(int(seed))
        vocab = int(m.info.vocab_size)
        special = set(getattr(tok, "all_special_ids", None) or [])
        pool = torch.tensor([i for i in range(vocab) if i not in special], dtype=torch.long)
        ids = pool[torch.randint(len(pool), (n, length), generator=g)]
        return ids, f"{n} x {length} random non-special tokens (seed {seed}; the tokenizer does not read English)"


def head_outputs(m: Any, ids: Any) -> np.ndarray:
    """``[n_layers, n_heads, B * S * d_head]``: every head's output z (before W_O) on ``ids``, float64."""
    import torch

    from .instrument import Taps, instrumented

    with torch.no_grad(), instrumented(m, taps=Taps(z=True)) as rec:
        m.model(input_ids=ids.to(m.device), use_cache=False)
    return rec.z_all().permute(0, 3, 1, 2, 4).reshape(m.info.n_layers, m.info.n_heads, -1).double().cpu().numpy()


def activation_delta(a: Any, b: Any, ids: Any) -> np.ndarray:
    """``[n_layers, n_heads]``: ``||z_b - z_a||_F / ||z_a||_F`` of each head's output over all prompts and
    positions of ``ids`` (both models read the same token ids). 0 where both are 0, inf where only ``a``'s is."""
    za, zb = head_outputs(a, ids), head_outputs(b, ids)
    return _ratio(np.sqrt(((zb - za) ** 2).sum(-1)), np.sqrt((za ** 2).sum(-1)))


# ----------------------------------------------------------------------------------------------------
# significance
# ----------------------------------------------------------------------------------------------------
def change_test(ra: Any, rb: Any, *, fdr: float = FDR) -> dict[str, np.ndarray]:
    """Per head of one detector (results ``ra``, ``rb``): ``z``, ``p_change``, ``q_change``, ``ci_disjoint``
    and ``significant`` (see the module docstring)."""
    from scipy.stats import norm

    from .stats import bh_q

    ea, eb = np.asarray(ra.effect, float), np.asarray(rb.effect, float)
    sa, sb = np.asarray(ra.null_std, float), np.asarray(rb.null_std, float)
    diff = eb - ea
    scale = np.sqrt(sa ** 2 + sb ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(diff == 0, 0.0, diff / scale)
    p = np.where(np.isfinite(diff) & ~np.isnan(z), 2.0 * norm.sf(np.abs(z)), np.nan)
    q = bh_q(p)
    lo_a, hi_a, lo_b, hi_b = (np.asarray(x, float) for x in (ra.ci_low, ra.ci_high, rb.ci_low, rb.ci_high))
    have_ci = np.isfinite(lo_a) & np.isfinite(hi_a) & np.isfinite(lo_b) & np.isfinite(hi_b)
    disjoint = np.where(have_ci, (lo_b > hi_a) | (lo_a > hi_b), True)
    with np.errstate(invalid="ignore"):
        sig = np.isfinite(q) & (q <= fdr) & disjoint & (diff != 0)
    return {"z": z, "p_change": p, "q_change": q, "ci_disjoint": disjoint & have_ci, "have_ci": have_ci,
            "significant": sig}


# ----------------------------------------------------------------------------------------------------
# the comparison
# ----------------------------------------------------------------------------------------------------
def check_same_shape(info_a: dict[str, Any], info_b: dict[str, Any], name_a: str = "a", name_b: str = "b") -> None:
    """InputError naming both shapes unless layers, heads, kv heads and head dim agree (keys missing from an
    atlas written by an older version are not compared)."""
    keys = [k for k in SHAPE_KEYS if k in info_a and k in info_b]
    layers_a, layers_b = info_a.get("attention_layers"), info_b.get("attention_layers")
    if layers_a is not None and layers_b is not None and list(layers_a) != list(layers_b):
        raise InputError(f"the models have different attention layers: a ({name_a}) {list(layers_a)!r:.80}; b "
                         f"({name_b}) {list(layers_b)!r:.80}; compare needs the same layout")
    if any(int(info_a[k]) != int(info_b[k]) for k in keys):
        def shape(i: dict[str, Any]) -> str:
            return ", ".join(f"{k}={i.get(k, '?')}" for k in SHAPE_KEYS)
        raise InputError(f"the models have different shapes: a ({name_a}) has {shape(info_a)}; b ({name_b}) has "
                         f"{shape(info_b)}; compare needs the same layers, heads, kv heads and head dim")


@dataclass
class Comparison:
    """Two atlases of same-shaped models and what changed between them.

    ``atlas_a``, ``atlas_b``: the scans; ``weight_delta`` ``[n_layers, n_heads]`` (None when atlases were
    compared without models) with ``weight_parts`` (per projection q/k/v/o); ``activation_delta``
    ``[n_layers, n_heads]`` (or None) on ``activation_prompts``; ``timings`` seconds of each step; ``notes``."""

    atlas_a: Atlas
    atlas_b: Atlas
    weight_delta: np.ndarray | None = None
    weight_parts: dict[str, np.ndarray] = field(default_factory=dict)
    activation_delta: np.ndarray | None = None
    activation_prompts: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fdr: float = FDR
    created: str = ""

    def __post_init__(self) -> None:
        check_same_shape(self.atlas_a.model, self.atlas_b.model, self.atlas_a.model_name, self.atlas_b.model_name)
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    # ----- access -------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.atlas_a.n_layers

    @property
    def n_heads(self) -> int:
        return self.atlas_a.n_heads

    @property
    def detectors(self) -> list[str]:
        """Detectors held by both atlases (in a's order)."""
        return [d for d in self.atlas_a.detectors if d in self.atlas_b.detectors]

    def skipped(self) -> dict[str, str]:
        """Detector -> why it has no comparison (skipped on a side, or held by one atlas only)."""
        out = {}
        for d in dict.fromkeys(self.atlas_a.detectors + self.atlas_b.detectors):
            if d not in self.detectors:
                out[d] = f"only in atlas {'a' if d in self.atlas_a.detectors else 'b'}"
                continue
            sa, sb = self.atlas_a.result(d).skipped, self.atlas_b.result(d).skipped
            if sa or sb:
                out[d] = "; ".join(f"{side}: skipped: {why}" for side, why in (("a", sa), ("b", sb)) if why)
        return out

    def test(self, detector: str) -> dict[str, np.ndarray]:
        """:func:`change_test` of ``detector``'s results in the two atlases."""
        return change_test(self.atlas_a.result(detector), self.atlas_b.result(detector), fdr=self.fdr)

    def changes(self) -> dict[str, dict[str, list[tuple[int, int]]]]:
        """Per compared detector (not skipped on either side): ``gained`` (labelled in b only), ``lost``
        (labelled in a only), ``kept`` (both) and ``significant`` (heads whose change is significant)."""
        out = {}
        skipped = self.skipped()
        for d in self.detectors:
            if d in skipped:
                continue
            la, lb = set(self.atlas_a.labelled(d)), set(self.atlas_b.labelled(d))
            sig = self.test(d)["significant"]
            out[d] = {"gained": sorted(lb - la), "lost": sorted(la - lb), "kept": sorted(la & lb),
                      "significant": [(int(x), int(y)) for x, y in zip(*np.nonzero(sig))]}
        return out

    def top_weight_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` heads whose weights moved most: ``(layer, head, relative change)`` ([] without models)."""
        if self.weight_delta is None:
            return []
        flat = np.nan_to_num(self.weight_delta, nan=-1.0, posinf=np.finfo(float).max).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        return [(int(i) // self.n_heads, int(i) % self.n_heads, float(self.weight_delta.ravel()[i])) for i in order]

    # ----- tables -------------------------------------------------------------------------------
    def to_dataframe(self) -> "pd.DataFrame":
        """One row per head x compared detector: ``layer, head, detector, score_a, score_b, delta, effect_a,
        effect_b, effect_delta, z, p_change, q_change, significant, labelled_a, labelled_b, weight_delta,
        activation_delta`` (NaN where unavailable; a detector skipped on a side has NaN scores there)."""
        import pandas as pd

        L, H = self.n_layers, self.n_heads
        layers, heads = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
        wd = self.weight_delta if self.weight_delta is not None else np.full((L, H), np.nan)
        ad = self.activation_delta if self.activation_delta is not None else np.full((L, H), np.nan)
        cols = ["layer", "head", "detector", "score_a", "score_b", "delta", "effect_a", "effect_b", "effect_delta",
                "z", "p_change", "q_change", "significant", "labelled_a", "labelled_b", "weight_delta",
                "activation_delta"]
        frames = []
        for d in self.detectors:
            ra, rb = self.atlas_a.result(d), self.atlas_b.result(d)
            t = self.test(d)
            frames.append(pd.DataFrame({
                "layer": layers.ravel(), "head": heads.ravel(), "detector": d,
                "score_a": np.asarray(ra.scores, float).ravel(), "score_b": np.asarray(rb.scores, float).ravel(),
                "delta": (np.asarray(rb.scores, float) - np.asarray(ra.scores, float)).ravel(),
                "effect_a": np.asarray(ra.effect, float).ravel(), "effect_b": np.asarray(rb.effect, float).ravel(),
                "effect_delta": (np.asarray(rb.effect, float) - np.asarray(ra.effect, float)).ravel(),
                "z": t["z"].ravel(), "p_change": t["p_change"].ravel(), "q_change": t["q_change"].ravel(),
                "significant": t["significant"].ravel(),
                "labelled_a": _mask(ra.labelled, L, H).ravel(), "labelled_b": _mask(rb.labelled, L, H).ravel(),
                "weight_delta": wd.ravel(), "activation_delta": ad.ravel()}))
        if not frames:
            return pd.DataFrame(columns=cols)
        return pd.concat(frames, ignore_index=True)[cols]

    def summary(self, top: int = 5) -> str:
        """Plain text: per detector the heads gained/lost and the significant changes; the top weight changes."""
        lines = [f"headatlas comparison: a = {self.atlas_a.model_name}, b = {self.atlas_b.model_name} "
                 f"({self.n_layers} layers x {self.n_heads} heads)"]
        for d, ch in self.changes().items():
            lines.append(f"  {d}: gained {_names(ch['gained'])}; lost {_names(ch['lost'])}; "
                         f"kept {len(ch['kept'])}; significant changes {len(ch['significant'])}")
        for d, why in self.skipped().items():
            lines.append(f"  {d}: not compared ({why})")
        if self.weight_delta is not None:
            tops = ", ".join(f"L{la}H{h} {v:.3g}" for la, h, v in self.top_weight_heads(top))
            lines.append(f"  weight delta (relative Frobenius), top {top}: {tops}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Comparison({self.atlas_a.model_name!r} -> {self.atlas_b.model_name!r}, "
                f"{self.n_layers}x{self.n_heads} heads, detectors={self.detectors})")

    # ----- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (schema ``headatlas.comparison/1``): both atlases in full, the deltas and the changes."""
        from . import __version__

        return {
            "schema": COMPARISON_SCHEMA, "headatlas_version": __version__, "created": self.created,
            "a": self.atlas_a.to_dict(), "b": self.atlas_b.to_dict(),
            "weight_delta": None if self.weight_delta is None else schema.encode_array(self.weight_delta),
            "weight_parts": {p: schema.encode_array(v) for p, v in self.weight_parts.items()},
            "activation_delta": None if self.activation_delta is None else schema.encode_array(self.activation_delta),
            "activation_prompts": self.activation_prompts,
            "timings": {k: schema.encode(float(v)) for k, v in self.timings.items()},
            "notes": list(self.notes), "fdr": float(self.fdr),
            "changes": {d: {k: [list(lh) for lh in v] for k, v in ch.items()} for d, ch in self.changes().items()},
        }

    @classmethod
    def from_dict(cls, doc: Any, source: str = "comparison") -> "Comparison":
        """Inverse of :meth:`to_dict`; AtlasFileError on anything malformed."""
        if not isinstance(doc, dict) or doc.get("schema") != COMPARISON_SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise AtlasFileError(f"{source}: not a headatlas comparison (schema {got!r:.60}, expected "
                                 f"{COMPARISON_SCHEMA!r})")
        try:
            a = Atlas.from_dict(doc["a"], f"{source}: a")
            b = Atlas.from_dict(doc["b"], f"{source}: b")
            grid = (a.n_layers, a.n_heads)

            def arr(x: Any) -> np.ndarray | None:
                return None if x is None else schema.decode_array(x, expect=grid).astype(float)

            return cls(a, b, weight_delta=arr(doc["weight_delta"]),
                       weight_parts={str(p): arr(v) for p, v in dict(doc["weight_parts"]).items()},
                       activation_delta=arr(doc["activation_delta"]),
                       activation_prompts=str(doc["activation_prompts"]),
                       timings={str(k): float(schema.decode(v)) for k, v in dict(doc["timings"]).items()},
                       notes=[str(n) for n in doc["notes"]], fdr=float(doc["fdr"]), created=str(doc["created"]))
        except AtlasFileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise AtlasFileError(f"{source}: malformed comparison ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Comparison":
        """Read ``comparison.json`` (a file, or a folder holding one)."""
        p = Path(os.fspath(path)).expanduser()
        if p.is_dir():
            p = p / "comparison.json"
        return cls.from_dict(schema.read_json(p), source=str(p))

    def to_html(self) -> str:
        """The HTML diff report (self-contained, no scripts, no network): see :mod:`headatlas.atlas.compare_report`."""
        from .atlas.compare_report import render_comparison

        return render_comparison(self)

    def save(self, out: str | os.PathLike) -> dict[str, str]:
        """Write ``out/comparison.json``, ``out/comparison.html`` and both sides' ``atlas_a.json`` /
        ``atlas_b.json`` (each atomically); returns the paths written."""
        from .outdir import atomic_write_text, prepare_out

        d = prepare_out(out)
        paths = {"json": d / "comparison.json", "html": d / "comparison.html", "atlas_a": d / "atlas_a.json",
                 "atlas_b": d / "atlas_b.json"}
        self.atlas_a.save(paths["atlas_a"])
        self.atlas_b.save(paths["atlas_b"])
        html = self.to_html()
        atomic_write_text(paths["json"], schema.dumps(self.to_dict()) + "\n")
        atomic_write_text(paths["html"], html)
        return {k: str(v) for k, v in paths.items()}


def _mask(labelled: Sequence[Sequence[int]], L: int, H: int) -> np.ndarray:
    m = np.zeros((L, H), dtype=bool)
    for la, h in labelled:
        m[int(la), int(h)] = True
    return m


def _names(heads: Sequence[tuple[int, int]], limit: int = 8) -> str:
    if not heads:
        return "none"
    text = ", ".join(f"L{la}H{h}" for la, h in heads[:limit])
    return text + (f" (+{len(heads) - limit} more)" if len(heads) > limit else "")


# ----------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------
def _atlas_path(spec: Any) -> Path | None:
    """The atlas.json that ``spec`` names (a .json file, or a folder with atlas.json and no model), else None."""
    if isinstance(spec, bool) or not isinstance(spec, (str, os.PathLike)):
        return None
    p = Path(os.fspath(spec)).expanduser()
    if p.suffix.lower() == ".json" and not p.is_dir():
        if not p.is_file():
            raise InputError(f"no such atlas file: {p}")
        return p
    if p.is_dir() and (p / "atlas.json").is_file() and not (p / "config.json").is_file() \
            and not (p / "adapter_config.json").is_file():
        return p / "atlas.json"
    return None


def _resolve(spec: Any, base: Any, device: Any, dtype: Any, what: str) -> Atlas | Any:
    """An :class:`Atlas` (atlas inputs) or a LoadedModel (anything else, adapters merged onto their base)."""
    from .models import LoadedModel, load
    from .models.adapter import is_adapter_folder, load_adapter

    if isinstance(spec, Atlas):
        return spec
    path = _atlas_path(spec)
    if path is not None:
        if base is not None:
            raise InputError(f"{what} is an atlas ({path}); a base model applies to adapter folders only")
        return Atlas.load(path)
    if is_adapter_folder(spec):
        return load_adapter(spec, base, device=device, dtype=dtype)
    if base is not None:
        raise InputError(f"base_{what} applies to a PEFT adapter folder (with adapter_config.json); {what} is not one")
    if isinstance(spec, LoadedModel):
        return spec
    return load(spec, device=device, dtype=dtype)


def compare(a: Any, b: Any, *, detectors: str | Sequence[str] | None = None, seed: int = 0, quick: bool = False,
            causal: bool = False, batch_size: int = 8, n_prompts: int | None = None,
            options: dict[str, Any] | None = None, base_a: Any = None, base_b: Any = None,
            device: str | None = None, dtype: str | None = None, activations: bool = True,
            out: str | os.PathLike | None = None, progress: Any = None,
            on_step: Callable[[str], None] | None = None) -> Comparison:
    """Compare the heads of models ``a`` and ``b`` (same layers, heads, kv heads and head dim).

    - ``a``, ``b``: anything :func:`headatlas.load` accepts (bundled name, HF id or folder, ``.gguf``,
      ``(model, tokenizer)``, LoadedModel), a PEFT/LoRA adapter folder (merged onto ``base_a``/``base_b``, or
      onto the base its ``adapter_config.json`` names), or two saved atlases (``atlas.json`` paths, folders
      holding one, or :class:`Atlas` objects: then no weight or activation deltas; both must be atlases).
    - ``detectors``, ``seed``, ``quick``, ``batch_size``, ``n_prompts``, ``options``, ``causal``: the scan run
      on both models (:func:`headatlas.scan`; ``causal`` default False: labels do not depend on the causal
      checks, which double the cost).
    - ``activations``: measure :func:`activation_delta` on the package sentences (one forward per model).
    - ``out``: write the comparison there (:meth:`Comparison.save`).
    - ``progress``: passed to both scans; ``on_step(message)`` is called before each step.
    """
    from .checks import check_bool, check_seed
    from .scan import resolve_detectors, scan

    seed = check_seed(seed)
    quick, causal, activations = (check_bool(quick, "quick"), check_bool(causal, "causal"),
                                  check_bool(activations, "activations"))
    names = resolve_detectors(detectors)
    if out is not None:
        from .outdir import prepare_out

        out = prepare_out(out)       # before any model loads
    step = on_step or (lambda _msg: None)
    timings: dict[str, float] = {}
    notes: list[str] = []

    step("loading a")
    t0 = time.perf_counter()
    ra = _resolve(a, base_a, device, dtype, "a")
    step("loading b")
    rb = _resolve(b, base_b, device, dtype, "b")
    timings["load"] = time.perf_counter() - t0
    if isinstance(ra, Atlas) != isinstance(rb, Atlas):
        raise InputError("compare needs two models or two atlases; got " +
                         ("an atlas (a) and a model (b)" if isinstance(ra, Atlas) else "a model (a) and an atlas (b)") +
                         ": scan the model first (headatlas scan) or pass both models")
    if isinstance(ra, Atlas):
        check_same_shape(ra.model, rb.model, ra.model_name, rb.model_name)
        if detectors is not None:
            keep = set(names)
            ra = _subset(ra, keep)
            rb = _subset(rb, keep)
        if ra.seed != rb.seed or ra.settings.get("quick") != rb.settings.get("quick"):
            notes.append(f"the atlases were scanned with different settings (a: seed {ra.seed}, quick "
                         f"{ra.settings.get('quick')}; b: seed {rb.seed}, quick {rb.settings.get('quick')}): "
                         "their prompts may differ")
        notes.append("two atlases compared without their models: weight and activation deltas are unavailable")
        comp = Comparison(ra, rb, notes=notes, timings=timings)
    else:
        check_same_shape(ra.info.to_dict(), rb.info.to_dict(), ra.source, rb.source)
        if ra.info.vocab_size != rb.info.vocab_size:
            notes.append(f"the vocabularies differ in size ({ra.info.vocab_size} vs {rb.info.vocab_size}); prompts "
                         "are written with each model's own tokenizer, activation deltas with a's token ids")
        step("weight deltas")
        t0 = time.perf_counter()
        wd, parts = weight_delta(ra, rb)
        timings["weight_delta"] = time.perf_counter() - t0
        act, act_desc = None, ""
        if activations:
            step("activation deltas")
            t0 = time.perf_counter()
            ids, act_desc = activation_prompts(ra, seed=seed)
            if int(ids.max()) >= rb.info.vocab_size:
                notes.append("activation deltas skipped: a's prompt tokens fall outside b's vocabulary")
                act_desc = ""
            else:
                act = activation_delta(ra, rb, ids)
            timings["activation_delta"] = time.perf_counter() - t0
        kw = dict(seed=seed, quick=quick, causal=causal, batch_size=batch_size, n_prompts=n_prompts,
                  options=options, progress=progress)
        step("scanning a")
        t0 = time.perf_counter()
        atlas_a = scan(ra, names, **kw)
        timings["scan_a"] = time.perf_counter() - t0
        step("scanning b")
        t0 = time.perf_counter()
        atlas_b = scan(rb, names, **kw)
        timings["scan_b"] = time.perf_counter() - t0
        comp = Comparison(atlas_a, atlas_b, weight_delta=wd, weight_parts=parts, activation_delta=act,
                          activation_prompts=act_desc, timings=timings, notes=notes)
    no_ci = [d for d in comp.detectors if d not in comp.skipped() and not comp.test(d)["have_ci"].any()]
    if no_ci:
        comp.notes.append(f"no bootstrap CI in {', '.join(no_ci)}: their changes are tested on the nulls alone")
    if out is not None:
        step("writing")
        comp.save(out)
    return comp


def _subset(atlas: Atlas, keep: set[str]) -> Atlas:
    names = [d for d in atlas.detectors if d in keep]
    return Atlas(atlas.model, {d: atlas.result(d) for d in names}, {d: atlas.meta[d] for d in names},
                 seed=atlas.seed, settings=atlas.settings, timings={d: t for d, t in atlas.timings.items() if d in keep},
                 headatlas_version=atlas.headatlas_version, created=atlas.created, notes=atlas.notes)


class _CallableModule(type(os)):
    """``headatlas.compare(...)`` calls :func:`compare` even where importing the submodule bound the package
    attribute ``headatlas.compare`` to this module (as for ``headatlas.scan``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Comparison:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
