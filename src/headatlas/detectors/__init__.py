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
# --- text, long-context and task detectors (rare_words, subword_merge, syntactic, retrieval, constant, single_letter, name_mover, negative_name_mover, s_inhibition)
from . import rare_words  # noqa: F401
from . import subword_merge  # noqa: F401
from . import syntactic  # noqa: F401
from . import retrieval  # noqa: F401
from . import mcqa  # noqa: F401  (registers constant, single_letter and correct_letter)
from . import mcqa_ep  # noqa: F401  (registers amplification and correct)
from . import mover  # noqa: F401
from . import ioi_roles  # noqa: F401   (negative_name_mover, s_inhibition; after mover)
from . import successor  # noqa: F401
from . import conflict  # noqa: F401   (memory, context)
from . import negative  # noqa: F401   (after conflict)
from . import facts  # noqa: F401  (registers subject, relation and mixed)
from . import semantic_induction  # noqa: F401
from . import function_vector  # noqa: F401  (registers function_vector and in_context)
from . import gating  # noqa: F401
# --- probing detectors (truthfulness, accuracy, consistency, coherence, faithfulness)
from . import truthfulness  # noqa: F401
from . import accuracy  # noqa: F401
from . import consistency  # noqa: F401
from . import coherence  # noqa: F401
from . import faithfulness  # noqa: F401

__all__ = ["NOT_FOUND", "STAGES", "CausalCheck", "Detector", "DetectorResult", "LabelRule", "ScanCache", "ScanConfig", "SharedPass",
           "all_detectors", "default_names", "get", "names", "no_causal_check", "register", "scan_order", "skipped_result"]
