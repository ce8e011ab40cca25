"""Detectors whose evidence is a probe: per-head classifiers on captured head outputs with a shuffled-label null
(truthfulness, accuracy, consistency, coherence, faithfulness), steered (ITI) in their causal checks."""
