"""The atlas: every head's scores, null distributions, p and q values, labels, causal checks and stages
for one model; JSON schema ``headatlas.atlas/2`` (lossless, atomic writes; ``/1`` files are migrated)
and a self-contained HTML report. Importing this package does not import torch."""

from .atlas import Atlas, DetectorMeta, Evidence, HeadView, head_name
from .records import CausalCheck, DetectorResult, LabelRule
from .schema import SCHEMA

__all__ = ["SCHEMA", "Atlas", "CausalCheck", "DetectorMeta", "DetectorResult", "Evidence", "HeadView", "LabelRule",
           "head_name"]
