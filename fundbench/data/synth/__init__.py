"""synthfundus: a deterministic synthetic retinal imaging suite, drawn on the fly.

Five families of labelled datasets (colour fundus photographs for diabetic retinopathy,
glaucoma and a multi-disease task; fluorescein angiograms; OCT B-scans), generated
from a seed with numpy and Pillow only: nothing is shipped or downloaded.

    from fundbench.data.synth import generate_dataset, write_sample_grid, FAMILIES, CLASSES
"""

from fundbench.data.synth.captions import FINDINGS_VOCAB, caption
from fundbench.data.synth.cfp import CFPSpec, DRLesions, cfp_spec, draw_cfp
from fundbench.data.synth.ffa import FFASpec, draw_ffa, ffa_spec
from fundbench.data.synth.generate import (
    CLASSES,
    COLUMNS,
    FAMILIES,
    MODALITY,
    ImagePlan,
    generate_dataset,
    plan_dataset,
    render_image,
)
from fundbench.data.synth.grid import write_sample_grid
from fundbench.data.synth.oct import OCTSpec, draw_oct, oct_spec

__all__ = [
    "CLASSES",
    "COLUMNS",
    "FAMILIES",
    "FINDINGS_VOCAB",
    "MODALITY",
    "CFPSpec",
    "DRLesions",
    "FFASpec",
    "ImagePlan",
    "OCTSpec",
    "caption",
    "cfp_spec",
    "draw_cfp",
    "draw_ffa",
    "draw_oct",
    "ffa_spec",
    "generate_dataset",
    "oct_spec",
    "plan_dataset",
    "render_image",
    "write_sample_grid",
]
