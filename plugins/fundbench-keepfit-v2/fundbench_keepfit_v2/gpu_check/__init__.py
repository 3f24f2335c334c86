"""Training-efficiency check of the paper preset's stage-2 step on one device (issue 13).

    python -m fundbench_keepfit_v2.gpu_check --out docs/gpu            # CUDA, about 3-5 min
    python -m fundbench_keepfit_v2.gpu_check --device cpu --tiny --steps 2 --out /tmp/check

Runs the real stage-2 step of ``train.py`` (the same functions the trainer calls: batch copy
and on-device augmentation, contrastive + generative + knowledge terms, AdamW, clipping) on
the paper architecture -- ResNet-50 at 512 px and a randomly initialised BERT-base shaped
like Bio_ClinicalBERT, so no weights are needed -- fed by the trainer's batch stream with
synthetic uint8 images and tokens (categorical texts padded to 32 tokens, elite captions
to 128, decoder targets to 90; 60-100 % of each text real tokens). One invocation measures:

* ``levers_on`` (every ``perf`` lever on, the paper preset's 96 + 96 batch) and
  ``levers_off`` (all off: fp32, NCHW, eager attention, torch's default AdamW, no compile,
  one loader thread without pinned memory, a host sync every step, V1's 24 + 24 batch);
* an ablation: each lever switched off alone. To avoid one compilation per entry, the
  effect of ``compile`` is levers_on vs ``no_compile``, and every other lever is measured
  against ``no_compile`` (all levers on, eager);
* FLOPs of one training step (forward + backward) counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the real shapes, and model FLOPs
  utilisation MFU = FLOPs / step time / the card's dense bf16 peak (:data:`PEAK_BF16_TFLOPS`;
  unknown card or CPU: ``mfu`` null with ``mfu_reason``);
* a ``torch.profiler`` breakdown of a few levers-on steps (top ops and kernels by device
  time) and the share of step time in data copy/augmentation, forward, backward,
  optimizer and idle gaps (CUDA events between the phases);
* host synchronisations inside the steps (``torch.cuda.set_sync_debug_mode("warn")``; on
  CPU the :class:`~fundbench_keepfit_v2.testing.HostSyncCounter` emulation).

Every entry is guarded: an error (e.g. out of memory for fp32 at 96 + 96 on an 80 GB card)
is recorded in its entry and the check goes on; entries that would overrun ``--budget-s``
are recorded as skipped. Writes ``gpu_check.json`` and ``gpu_check.log`` under ``--out``
and prints a one-line summary (progress goes to stderr).

Modules: ``shapes`` (paper/tiny shapes, synthetic batches), ``levers`` (the lever settings
of each entry), ``measure`` (:class:`Check`: one entry), ``flops`` (FLOP counts, peak
table, MFU), ``profiling`` (phase timer, ``torch.profiler`` breakdown), ``host_syncs``,
``run`` (:func:`run_check`: every entry within the budget), ``report`` (summary line, log,
files) and ``cli`` (:func:`main`, run by ``__main__``).
"""

from __future__ import annotations

from fundbench_keepfit_v2.gpu_check.cli import main
from fundbench_keepfit_v2.gpu_check.flops import (
    PEAK_BF16_TFLOPS,
    RESNET50_GFLOPS_224,
    add_mfu,
    analytic_flops,
    count_step_flops,
    peak_tflops,
)
from fundbench_keepfit_v2.gpu_check.host_syncs import count_host_syncs
from fundbench_keepfit_v2.gpu_check.levers import (
    CUDA_ONLY,
    LEVERS,
    NEEDS_CUDA,
    Setting,
    lever_settings,
    lever_table,
    without,
)
from fundbench_keepfit_v2.gpu_check.measure import Check
from fundbench_keepfit_v2.gpu_check.profiling import PhaseTimer, profile_breakdown
from fundbench_keepfit_v2.gpu_check.report import log_text, summary_line, write_outputs
from fundbench_keepfit_v2.gpu_check.run import run_check
from fundbench_keepfit_v2.gpu_check.shapes import (
    CATEGORICAL_TEXT_LEN,
    ELITE_TEXT_LEN,
    V1_BATCH,
    SyntheticBatches,
    paper_shapes,
)

__all__ = [
    "CATEGORICAL_TEXT_LEN",
    "CUDA_ONLY",
    "ELITE_TEXT_LEN",
    "LEVERS",
    "NEEDS_CUDA",
    "PEAK_BF16_TFLOPS",
    "RESNET50_GFLOPS_224",
    "V1_BATCH",
    "Check",
    "PhaseTimer",
    "Setting",
    "SyntheticBatches",
    "add_mfu",
    "analytic_flops",
    "count_host_syncs",
    "count_step_flops",
    "lever_settings",
    "lever_table",
    "log_text",
    "main",
    "paper_shapes",
    "peak_tflops",
    "profile_breakdown",
    "run_check",
    "summary_line",
    "without",
    "write_outputs",
]
