"""Full fine-tuning of a model's image encoder with RETFound's recipe (retfound.md s. 3.3).

* :mod:`.recipe`: the hyperparameters, the ``tiny`` and ``paper`` presets and the checks of
  a task's ``options`` (pure Python: planning imports nothing heavy);
* :mod:`.optim`: layer-wise lr decay groups (timm's ``param_groups_layer_decay``) and the
  per-iteration warm-up + half-cosine schedule;
* :mod:`.data`: image lists, the timm training transform, seeded random streams;
* :mod:`.trainer`: the training loop, per-epoch checkpoints, resume, selection on val and
  the final cache.

timm is an optional dependency (``pip install 'fundbench[finetune]'``), imported only when a
fine-tuning cell computes.
"""
