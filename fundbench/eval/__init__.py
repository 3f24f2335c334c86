"""Evaluation over cached embeddings: protocols, few-shot heads, metrics with clustered
bootstrap CIs, and the cells each protocol produces."""
