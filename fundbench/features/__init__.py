"""Embeddings: the content-addressed feature store with its extraction pass, and the
public export of embeddings (fundbench embed)."""
