"""Detectors whose evidence is a head's direct effect on the output logits through the unembedding (direct logit
attribution from activations, or the OV circuit from the weights): name movers and negative name movers (IOI),
the MCQA letter heads, memory / context / negative heads (knowledge conflict), subject / relation / mixed heads
(facts), semantic induction and successor heads, with the shared passes they read."""
