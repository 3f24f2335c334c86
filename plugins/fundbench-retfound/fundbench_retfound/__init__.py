"""RETFound for fundbench: ``retfound_cfp``, ``retfound_oct`` (MAE ViT-L/16) and
``retfound_dinov2`` (DINOv2 ViT-L/14), built with timm and loaded strictly from local files.

The hooks live in :mod:`fundbench_retfound.plugin` (light: no torch), the models in
:mod:`fundbench_retfound.model`, the checkpoint handling in :mod:`fundbench_retfound.loading`;
see README.md for formats, allowances and preprocessing.
"""
