"""``random_init``: a randomly initialised timm ResNet with a fixed seed — the floor.

Every report shows it, so a number can be read against what an untrained encoder already
gets from the protocol alone. It needs no weights and has no text tower. The hook lives in
:mod:`fundbench_random_init.plugin`, the model in :mod:`fundbench_random_init.model`.
"""
