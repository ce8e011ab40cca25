"""Detectors whose evidence is the attention pattern: where a head's attention goes (previous token, duplicate
token, induction, positional, attention sink, rare words, subword merge, syntactic, retrieval), and the shared
passes they read (:mod:`.synthetic`: the random-token repeat passes; :mod:`.spans`: attention mass on chosen
key spans; :mod:`.scoring`: pure pattern-scoring functions)."""
