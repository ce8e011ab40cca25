"""An atlas as tables and text: :func:`to_dataframe` (one row per head x detector) and :func:`summary` (a plain-text
account per detector). :class:`~headatlas.atlas.Atlas` calls these (``Atlas.to_dataframe``, ``Atlas.summary``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .records import PER_HEAD_FIELDS
from .views import head_name

if TYPE_CHECKING:
    import pandas as pd

    from .protocols import AtlasLike


def to_dataframe(atlas: "AtlasLike") -> "pd.DataFrame":
    """One row per head x detector: ``layer, head, head_id, detector, stage, score, null_mean, null_std,
    effect, ci_low, ci_high, p_value, q_value, stability, labelled, status`` (status: missing (NaN) where
    unlabelled) plus one column per extra per-head array (NaN where a detector has no such extra; a name that
    clashes with a base column is prefixed ``extra_``)."""
    import pandas as pd

    base = ["layer", "head", "head_id", "detector", "stage", *PER_HEAD_FIELDS, "labelled", "status"]
    base[base.index("scores")] = "score"
    layers, heads = np.meshgrid(np.arange(atlas.n_layers), np.arange(atlas.n_heads), indexing="ij")
    extra_names: list[str] = []
    for r in map(atlas.result, atlas.detectors):
        for k, v in r.extras.items():
            col = f"extra_{k}" if k in base else k
            if _per_head(atlas, v) and col not in extra_names:
                extra_names.append(col)
    frames = []
    n = atlas.n_layers * atlas.n_heads
    for name in atlas.detectors:
        r = atlas.result(name)
        lab = np.zeros((atlas.n_layers, atlas.n_heads), dtype=bool)
        for layer, h in r.labelled:
            lab[layer, h] = True
        cols: dict[str, Any] = {
            "layer": layers.ravel(), "head": heads.ravel(),
            "head_id": [head_name(la, h) for la, h in zip(layers.ravel(), heads.ravel())],
            "detector": [name] * n, "stage": [atlas.meta[name].stage] * n,
        }
        for key in PER_HEAD_FIELDS:
            cols["score" if key == "scores" else key] = np.asarray(getattr(r, key), dtype=float).ravel()
        cols["labelled"] = lab.ravel()
        status = np.full((atlas.n_layers, atlas.n_heads), None, dtype=object)
        for layer, h in r.labelled:
            status[layer, h] = atlas.label_status(name, int(layer), int(h))
        cols["status"] = status.ravel()
        for col in extra_names:
            key = col[len("extra_"):] if col.startswith("extra_") and col[len("extra_"):] in base else col
            v = r.extras.get(key)
            cols[col] = np.asarray(v).ravel() if v is not None and _per_head(atlas, v) else np.full(n, np.nan)
        frames.append(pd.DataFrame(cols))
    if not frames:
        return pd.DataFrame(columns=base + extra_names)
    return pd.concat(frames, ignore_index=True)


def summary(atlas: "AtlasLike", top: int = 5) -> str:
    """A plain-text summary: per detector, its top labelled heads (score, null, z), "none found",
    or the reason it was skipped."""
    info = atlas.model
    lines = [f"headatlas atlas of {atlas.model_name} ({info.get('architecture', '?')}, {atlas.n_layers} layers x "
             f"{atlas.n_heads} heads), seed {atlas.seed}"]
    for name in atlas.detectors:
        r = atlas.result(name)
        m = atlas.meta[name]
        if r.skipped:
            lines.append(f"  {name} [{m.stage}]: skipped: {r.skipped}")
            continue
        dist = r.details.get("distributed")
        if isinstance(dist, dict):
            lines.append(f"  {name} [{m.stage}]: distributed: {dist.get('n_pass')} of {dist.get('n_heads')} heads pass "
                         "the statistic (not specific to a few heads; no labels, no set-ablation check)")
            continue
        tops = atlas.top_heads(name, top)
        if not tops:
            lines.append(f"  {name} [{m.stage}]: none found{atlas.best_head_hint(name)}")
            continue
        heads = ", ".join(f"{e.name} {e.score:.3g} (null {e.null_mean:.3g}, effect {e.effect:.3g}, q {e.q_value:.2g}, "
                          f"{e.status})" for e in tops)
        more = len(r.labelled) - len(tops)
        counts = ", ".join(f"{v} {k}" for k, v in atlas.status_counts(name).items() if v)
        lines.append(f"  {name} [{m.stage}]: {len(r.labelled)} labelled ({counts}): {heads}"
                     + (f", +{more} more" if more > 0 else ""))
        c = r.causal
        if c is not None and c.ran:
            lines.append(f"    causal ({c.intervention}, {c.metric}, {c.expected} expected): {c.effect:+.3g} vs random "
                         f"median {c.random_median:+.3g} over {len(c.random_effects)} sets, p {c.p_value:.2g}, "
                         f"q {c.q_value:.2g} across the atlas's checks")
    return "\n".join(lines)


def _per_head(atlas: "AtlasLike", v: Any) -> bool:
    """An extra with one value per head (``[n_layers, n_heads]``); others live only in the JSON."""
    return np.shape(v) == (atlas.n_layers, atlas.n_heads)
