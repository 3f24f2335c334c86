"""synthfundus: a deterministic synthetic retinal imaging suite, drawn on the fly.

Five families of labelled datasets (colour fundus photographs for diabetic retinopathy,
glaucoma and a multi-disease task; fluorescein angiograms; OCT B-scans), generated
from a seed with numpy and Pillow only: nothing is shipped or downloaded. Colour fundus
sets may be photographed by a second camera ("b") for domain shift, and every image has
subgroup attributes (camera, site, sex, age band, eye) for per-slice metrics.

    from fundbench.data.synth import generate_dataset, write_sample_grid, FAMILIES, CLASSES
"""

from fundbench.data.synth.captions import FINDINGS_VOCAB, caption
from fundbench.data.synth.cfp import CAMERAS, CameraProfile, CFPSpec, DRLesions, cfp_spec, draw_cfp
from fundbench.data.synth.ffa import FFASpec, draw_ffa, ffa_spec
from fundbench.data.synth.generate import (
    ATTRIBUTES,
    CLASSES,
    COLUMNS,
    FAMILIES,
    MODALITY,
    ImagePlan,
    attribute_table,
    generate_dataset,
    plan_dataset,
    render_image,
)
from fundbench.data.synth.grid import write_sample_grid
from fundbench.data.synth.oct import OCTSpec, draw_oct, oct_spec

__all__ = [
    "ATTRIBUTES",
    "CAMERAS",
    "CLASSES",
    "COLUMNS",
    "FAMILIES",
    "FINDINGS_VOCAB",
    "MODALITY",
    "CFPSpec",
    "CameraProfile",
    "DRLesions",
    "FFASpec",
    "ImagePlan",
    "OCTSpec",
    "attribute_table",
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
