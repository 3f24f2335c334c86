"""The imaging modalities fundbench knows (torch-free, so definitions load without torch)."""

from __future__ import annotations

#: colour fundus photography, fluorescein angiography, optical coherence tomography
MODALITIES = frozenset({"cfp", "ffa", "oct"})
