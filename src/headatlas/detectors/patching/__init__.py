"""Detectors whose evidence is an intervention on the running model: activation patching (function vectors),
path patching (S-inhibition) and learned head gates (causal head gating)."""
