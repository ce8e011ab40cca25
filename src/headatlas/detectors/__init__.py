"""Head-type detectors. Every detector module registers itself here by being imported."""

from .base import (STAGES, Detector, DetectorResult, ScanConfig, all_detectors, get, label_heads, names, register,
                   skipped_result)

# Detector modules are imported explicitly below, one line each, so the set is visible in one place.
# --- pattern detectors on random-token data (previous_token, duplicate_token, induction, positional, attention_sink)
# --- text, long-context and task detectors (rare_words, subword_merge, syntactic, retrieval, constant, single_letter, mover)

__all__ = ["STAGES", "Detector", "DetectorResult", "ScanConfig", "all_detectors", "get", "label_heads", "names",
           "register", "skipped_result"]
