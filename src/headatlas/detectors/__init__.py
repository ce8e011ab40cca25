"""Head-type detectors. Every detector module registers itself here by being imported."""

from .base import (NOT_FOUND, STAGES, CausalCheck, Detector, DetectorResult, LabelRule, ScanCache, ScanConfig,
                   SharedPass, all_detectors, default_names, get, names, no_causal_check, register, scan_order, skipped_result)

# Detector modules are imported explicitly below, one line each, so the set is visible in one place. They are
# grouped by the evidence a label rests on (docs/detector_contract.md): patterns/, dla/, patching/, probing/.
# --- attention patterns
from .patterns import previous_token  # noqa: F401
from .patterns import duplicate_token  # noqa: F401
from .patterns import induction  # noqa: F401
from .patterns import positional  # noqa: F401
from .patterns import attention_sink  # noqa: F401
from .patterns import rare_words  # noqa: F401
from .patterns import subword_merge  # noqa: F401
from .patterns import syntactic  # noqa: F401
from .patterns import retrieval  # noqa: F401
# --- direct logit attribution (activations or OV weights through the unembedding)
from .dla import mcqa  # noqa: F401  (registers constant, single_letter and correct_letter)
from .dla import mcqa_ep  # noqa: F401  (amplification)
from .dla import name_mover  # noqa: F401
from .dla import negative_name_mover  # noqa: F401
from .dla import successor  # noqa: F401
from .dla import conflict  # noqa: F401   (memory, context)
from .dla import negative  # noqa: F401
from .dla import facts  # noqa: F401  (registers subject, relation and mixed)
from .dla import semantic_induction  # noqa: F401
# --- interventions: activation patching, path patching, learned gates
from .patching import s_inhibition  # noqa: F401
from .patching import function_vector  # noqa: F401
from .patching import mcqa_correct  # noqa: F401  (correct)
from .dla import in_context  # noqa: F401
from .patching import gating  # noqa: F401
# --- probes
from .probing import truthfulness  # noqa: F401
from .probing import accuracy  # noqa: F401
from .probing import consistency  # noqa: F401
from .probing import coherence  # noqa: F401
from .probing import faithfulness  # noqa: F401

__all__ = ["NOT_FOUND", "STAGES", "CausalCheck", "Detector", "DetectorResult", "LabelRule", "ScanCache", "ScanConfig", "SharedPass",
           "all_detectors", "default_names", "get", "names", "no_causal_check", "register", "scan_order", "skipped_result"]
