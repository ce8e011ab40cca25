"""Causal methods: ablation, activation / attribution / path patching, steering (batched, exact).

>>> import headatlas
>>> m = headatlas.load("smollm2-135m")                                                  # doctest: +SKIP
>>> effects = headatlas.patch_heads(m, clean, corrupted, " Mary", " John", normalize=True)   # doctest: +SKIP
"""

from .ablation import AblationEffect, ablate_heads, ablation_edits, ablation_effect
from .attribution import Attribution, attribution_deltas
from .metrics import Metric, logit_diff, logprob, loss, prob, user_metric
from .path_patching import PathPatchResult, path_patch
from .patching import PatchMap, normalise, patch_heads, patch_heads_by_position, patching_map
from .steering import SteeringEffect, head_directions, steer, steer_generate, steering_edits, steering_effect

__all__ = ["AblationEffect", "Attribution", "Metric", "PatchMap", "PathPatchResult", "SteeringEffect",
           "ablate_heads", "ablation_edits", "ablation_effect", "attribution_deltas", "head_directions",
           "logit_diff", "logprob", "loss", "normalise", "patch_heads", "patch_heads_by_position", "patching_map",
           "path_patch", "prob", "steer", "steer_generate", "steering_edits", "steering_effect", "user_metric"]
