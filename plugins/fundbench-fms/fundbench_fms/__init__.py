"""Seven newer retinal foundation models for fundbench, one family per file.

* ``plugins/<family>.py``: the entry point of the family (light, no torch): its
  registrations and declared facts (licence, paper, upstream code, pre-training data,
  verification), each with its source;
* ``models/<family>.py``: the ``fundbench.Model``, the architecture (timm, open_clip or
  transformers modules), strict checkpoint loading and the authors' preprocessing;
* ``fakes/<family>.py``: random-weight files in the released containers, for tests and
  ``scripts/make-fake-weights.py``;
* :mod:`fundbench_fms.common`: what several families share.

Facts are from the project's reference notes ``models-2026.md`` (cited "ref. §x") and the
upstream repositories at the commits each plugin declares.
"""
