"""The atlas: every head's scores, null baselines, labels and stages for one model; JSON schema
``headatlas.atlas/1`` (lossless, atomic writes) and a self-contained HTML report."""

from .atlas import Atlas, DetectorMeta, Evidence, HeadView, head_name
from .schema import SCHEMA

__all__ = ["SCHEMA", "Atlas", "DetectorMeta", "Evidence", "HeadView", "head_name"]
