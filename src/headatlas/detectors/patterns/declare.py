"""How the pattern detectors register: the ones on the shared random-token pass, and the attention-defined ones.

- :func:`on_synthetic`: a detector reading the shared synthetic pass (:data:`.synthetic.SYNTHETIC`); its token view
  is the pass's first repeated sequence. :func:`repeat_loss_detector` adds the repeat-loss causal check that
  previous-token, duplicate-token and induction heads share (metric family ``"repeat loss"``).
- :func:`attention_defined`: a head type with no behavioural metric (``metric=""``): the attention pattern is the
  claim, and the reason no ablation check is run is stated in the atlas (``no_causal``).
"""

from __future__ import annotations

from typing import Any

from ..base import Detector, register
from ..behaviours import repeat_loss_behaviour, repeat_loss_check
from .synthetic import SYNTHETIC, SYNTHETIC_OPTIONS, check_synthetic_options, example_prompt

NO_BEHAVIOUR = "no behaviour of the model is specific to them, so no ablation check is run"


def on_synthetic(**kw: Any) -> Detector:
    """Register a pattern detector on the shared synthetic pass (``uses``, ``example`` and the pass's options
    filled in)."""
    return register(Detector(evidence="pattern", uses=(SYNTHETIC,), example=example_prompt, options=SYNTHETIC_OPTIONS,
                             options_rule=check_synthetic_options, **kw))


def repeat_loss_detector(**kw: Any) -> Detector:
    """Register a synthetic-pass detector whose causal check is the repeat loss (:func:`repeat_loss_check`)."""
    return on_synthetic(metric="repeat loss", causal=repeat_loss_check, behaviour=repeat_loss_behaviour, **kw)


def attention_defined(*, defined_by: str, why: str = NO_BEHAVIOUR, synthetic: bool = False, **kw: Any) -> Detector:
    """Register an attention-defined pattern detector; ``no_causal`` reads "<name> heads are defined by
    ``defined_by``; ``why``". ``synthetic``: it reads the shared synthetic pass."""
    reason = f"{kw['name'].replace('_', '-')} heads are defined by {defined_by}; {why}"
    if synthetic:
        return on_synthetic(metric="", no_causal=reason, **kw)
    return register(Detector(evidence="pattern", metric="", no_causal=reason, **kw))
