"""Head-type detectors. Every detector module registers itself here by being imported."""

from .base import (NOT_FOUND, STAGES, CausalCheck, Detector, DetectorResult, LabelRule, ScanCache, ScanConfig,
                   SharedPass, all_detectors, default_names, get, names, no_causal_check, register, scan_order, skipped_result)

# Detector modules are imported explicitly below, one line each, so the set is visible in one place.
# --- pattern detectors on random-token data (previous_token, duplicate_token, induction, positional, attention_sink)
from . import previous_token  # noqa: F401
from . import duplicate_token  # noqa: F401
from . import induction  # noqa: F401
from . import positional  # noqa: F401
from . import attention_sink  # noqa: F401
# --- text, long-context and task detectors (rare_words, subword_merge, syntactic, retrieval, constant, single_letter, mover)
from . import rare_words  # noqa: F401
from . import subword_merge  # noqa: F401
from . import syntactic  # noqa: F401
from . import retrieval  # noqa: F401
from . import mcqa  # noqa: F401  (registers constant, single_letter and correct_letter)
from . import mover  # noqa: F401

__all__ = ["NOT_FOUND", "STAGES", "CausalCheck", "Detector", "DetectorResult", "LabelRule", "ScanCache", "ScanConfig", "SharedPass",
           "all_detectors", "default_names", "get", "names", "no_causal_check", "register", "scan_order", "skipped_result"]
