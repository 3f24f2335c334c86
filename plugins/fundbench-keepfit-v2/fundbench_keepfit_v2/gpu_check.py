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
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from fundbench_keepfit_v2.config import Config, PerfConfig, make_config
from fundbench_keepfit_v2.data import (
    BatchStream,
    augment_params,
    drop_full_masks,
    shared_memory_note,
)
from fundbench_keepfit_v2.model import KeepFITV2
from fundbench_keepfit_v2.testing import HostSyncCounter
from fundbench_keepfit_v2.text import build_bert
from fundbench_keepfit_v2.train import (
    StepMeter,
    backend_settings,
    batch_to_device,
    make_optimizer,
    optimizer_kind,
    optimizer_step,
    prepare_model,
    stage_loss,
    stage_total,
)

#: Peak dense bf16 tensor throughput in TFLOPS (vendor data sheets, no sparsity).
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}
RESNET50_GFLOPS_224 = 8.2  # 4.1 GMACs x 2
CATEGORICAL_TEXT_LEN = 32  # a prompt: "a colour fundus photograph showing ..." + padding
ELITE_TEXT_LEN = 128  # an atlas caption
V1_BATCH = 24  # the batch of the levers-off baseline (V1 main_pretrain.py)
#: Levers in ablation order (``compile`` first: it is compared with levers_on).
LEVERS = (
    "compile",
    "bf16",
    "channels_last",
    "sdpa",
    "fused_adamw",
    "loader",
    "sync_free",
    "cudnn_benchmark",
    "tf32",
    "batch",
)
#: Levers that do nothing without CUDA (compile does work on CPU, but inductor takes about
#: 45 s there: not for a smoke test).
CUDA_ONLY = ("compile", "bf16", "cudnn_benchmark", "tf32")
NEEDS_CUDA = "skipped: needs CUDA"


def peak_tflops(name: str) -> tuple[float | None, str]:
    """(peak bf16 TFLOPS, which table row) for a CUDA device name."""
    upper = name.upper()
    if "H100" in upper:
        row = "H100 PCIe" if "PCIE" in upper else "H100 NVL" if "NVL" in upper else "H100 SXM"
        return PEAK_BF16_TFLOPS[row], row
    for row in ("H200", "A100", "L40S", "L4", "A10"):
        if row in upper:
            return PEAK_BF16_TFLOPS[row], row
    return None, f"unknown card {name!r}: no bf16 peak in the table"


# -- shapes and synthetic data ------------------------------------------------------------------


def _paper_shapes(tiny: bool) -> tuple[dict, dict]:
    overrides = {"stage2.augment": "true"}
    bert = {
        "vocab_size": 28996,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "pad_token_id": 0,
    }
    if tiny:
        overrides.update(
            {
                "vision.arch": "resnet_small",
                "vision.width": "8",
                "vision.resolution": "64",
                "model.proj_dim": "32",
                "model.decoder_dim": "32",
                "model.decoder_heads": "2",
                "model.decoder_ff": "64",
                "model.decoder_layers": "1",
                "model.caption_max_length": "24",
                "stage2.batch_size": "4",
                "stage2.elite_batch_size": "4",
            }
        )
        bert.update(
            vocab_size=500,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    return overrides, bert


class SyntheticBatches:
    """Host batches shaped like ``BatchMaker.stage2``'s: uint8 images (drawn per step from a
    small pool, as decoded images would arrive), token ids, labels and augmentation
    parameters. Picklable, so ``DataLoader`` workers can build them."""

    def __init__(
        self,
        batch: int,
        elite: int,
        resolution: int,
        vocab: int,
        text_lengths: tuple[int, int],
        caption_length: int,
        pool: int = 16,
    ) -> None:
        g = torch.Generator().manual_seed(0)
        self.batch, self.elite, self.pool = batch, elite, pool
        self.images = torch.randint(
            0, 256, (pool, 3, resolution, resolution), generator=g, dtype=torch.uint8
        )

        def tokens(length: int) -> tuple[torch.Tensor, torch.Tensor]:
            """Texts of 60-100 % of ``length`` tokens, padded (id 0) to ``length``."""
            ids = torch.randint(5, vocab, (pool, length), generator=g)
            ids[:, 0] = 2
            keep = torch.randint(int(0.6 * length), length + 1, (pool, 1), generator=g)
            mask = (torch.arange(length)[None, :] < keep).long()
            return ids * mask, mask

        self.cat_ids, self.cat_mask = tokens(text_lengths[0])
        self.elite_ids, self.elite_mask = tokens(text_lengths[1])
        self.caption_ids, self.caption_mask = tokens(caption_length)
        self.labels = torch.randint(0, max(2, pool // 3), (pool,), generator=g)

    def make(self, step: int) -> dict:
        g = torch.Generator().manual_seed(step)
        ic = torch.randint(0, self.pool, (self.batch,), generator=g)
        ie = torch.randint(0, self.pool, (self.elite,), generator=g)
        batch = {
            "cat_images": self.images[ic],
            "cat_ids": self.cat_ids[ic],
            "cat_mask": self.cat_mask[ic],
            "cat_labels": self.labels[ic],
            "cat_aug": augment_params(step, 0, self.batch),
            "elite_images": self.images[ie],
            "elite_ids": self.elite_ids[ie],
            "elite_mask": self.elite_mask[ie],
            "elite_labels": ie,  # the same caption twice: positives of each other
            "caption_ids": self.caption_ids[ie],
            "caption_mask": self.caption_mask[ie],
            "elite_aug": augment_params(step, 1, self.elite),
        }
        return drop_full_masks(batch)


# -- FLOPs ---------------------------------------------------------------------------------------


def _cpu_sdpa_mapping() -> dict:
    """FlopCounterMode formulas for CPU's fused attention (CUDA's kernels are in torch's
    registry, the CPU one is not)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):

        def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):

        def backward(grad_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
            kwargs.pop("out_shape", None)
            return fc.sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)

        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return mapping


def count_step_flops(
    model: KeepFITV2, batch: dict, config: Config, use_amp: bool
) -> tuple[int, dict[str, int]]:
    """FLOPs of one training step's forward + backward (FlopCounterMode: matmuls,
    convolutions, attention), eagerly, with gradients cleared afterwards; and per op."""
    from torch.utils.flop_counter import FlopCounterMode

    compiled = model.vision_model.compiled_trunk
    model.vision_model.compiled_trunk = None  # count the same ops eagerly
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping())
        with counter:
            loss, _ = stage_loss("stage2", model, batch, config, 1, use_amp)
            loss.backward()
    finally:
        model.vision_model.compiled_trunk = compiled
        model.zero_grad(set_to_none=True)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def analytic_flops(model: KeepFITV2, config: Config, batch: dict) -> float:
    """The closed-form estimate of the previous check, for comparison: ResNet-50 8.2 GFLOPs
    at 224 px x (res/224)^2 (small ResNets: their convolutions counted), BERT
    2 x params x tokens + 4 x layers x tokens^2 x hidden, decoder 2 x params x tokens;
    step = 3 x forward."""
    res = config.vision.resolution
    if config.vision.arch == "resnet50":
        vision = RESNET50_GFLOPS_224 * 1e9 * (res / 224) ** 2
    else:
        vision = _conv_flops(model.vision_model.model, res)
    bert = model.text_model.model
    h, layers = bert.config.hidden_size, bert.config.num_hidden_layers
    non_embed = sum(
        p.numel()
        for n, p in bert.named_parameters()
        if not n.startswith("embeddings.") and not n.startswith("pooler.")
    )
    # every position counts, padding included (the attention runs over it)
    lengths = [batch["cat_ids"].shape[1]] * batch["cat_ids"].shape[0]
    lengths += [batch["elite_ids"].shape[1]] * batch["elite_ids"].shape[0]
    text = sum(2 * non_embed * t + 4 * layers * t * t * h for t in lengths)
    dec_params = sum(
        p.numel() for n, p in model.caption_decoder.named_parameters() if n.startswith("decoder.")
    )
    dec_vocab = model.caption_decoder.token_embed.weight.numel()
    caption_tokens = batch["caption_ids"].shape[0] * (batch["caption_ids"].shape[1] - 1)
    decoder = 2 * (dec_params + dec_vocab) * caption_tokens
    n_images = batch["cat_images"].shape[0] + batch["elite_images"].shape[0]
    return 3 * (vision * n_images + text + decoder)


def _conv_flops(module: torch.nn.Module, res: int) -> float:
    total = 0.0
    hooks = []

    def hook(m, _inp, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(hook))
    was = module.training
    with torch.no_grad():
        module.eval()(torch.zeros(1, 3, res, res))
    module.train(was)
    for h in hooks:
        h.remove()
    return total


# -- one measured configuration ----------------------------------------------------------------


@dataclasses.dataclass
class Setting:
    """What one entry runs: the perf levers, the log (sync) interval and the batch."""

    perf: PerfConfig
    sync_every: int  # 0: only at the end of the entry
    batch: int
    skipped: dict = dataclasses.field(default_factory=dict)  # lever -> reason


def lever_settings(
    on: bool, device: torch.device, batch_on: int, batch_off: int, workers: int
) -> Setting:
    """All levers on (or off), minus what ``device`` cannot do (recorded in ``skipped``)."""
    perf = PerfConfig(
        channels_last=on,
        bf16=on,
        tf32=on,
        cudnn_benchmark=on,
        sdpa=on,
        fused_adamw=on,
        compile=on,
        loader_workers=workers if on else 0,
        pin_memory=on,
    )
    setting = Setting(perf, 0 if on else 1, batch_on if on else batch_off)
    if device.type != "cuda":
        for lever in CUDA_ONLY:
            if on:
                setting.skipped[lever] = NEEDS_CUDA
            setattr(perf, lever, False)
        perf.pin_memory = False
    return setting


def without(setting: Setting, lever: str, batch_off: int) -> Setting:
    """``setting`` with one lever switched off."""
    out = Setting(dataclasses.replace(setting.perf), setting.sync_every, setting.batch)
    if lever == "loader":
        out.perf.loader_workers, out.perf.pin_memory = 0, False
    elif lever == "sync_free":
        out.sync_every = 1
    elif lever == "batch":
        out.batch = batch_off
    else:
        setattr(out.perf, lever, False)
    return out


class Check:
    """Holds the base model and shapes; :meth:`measure` runs one entry."""

    def __init__(self, device: torch.device, tiny: bool, batch: int | None) -> None:
        self.device, self.tiny = device, tiny
        overrides, self.bert_cfg = _paper_shapes(tiny)
        if batch:
            overrides.update(
                {"stage2.batch_size": str(batch), "stage2.elite_batch_size": str(batch)}
            )
        self.base_config = make_config("paper", overrides)
        self.batch_on = self.base_config.stage2.batch_size
        self.batch_off = 2 if tiny else V1_BATCH
        self.text_lengths = (8, 16) if tiny else (CATEGORICAL_TEXT_LEN, ELITE_TEXT_LEN)
        torch.manual_seed(0)
        self.model = KeepFITV2(self.base_config, build_bert(self.bert_cfg)).train()
        self.flops: dict[int, tuple[int, dict]] = {}
        self.analytic: dict[int, float] = {}

    def config_for(self, setting: Setting) -> Config:
        config = copy.deepcopy(self.base_config)
        config.perf = setting.perf
        config.stage2.batch_size = config.stage2.elite_batch_size = setting.batch
        return config

    def measure(
        self,
        name: str,
        setting: Setting,
        steps: int,
        warmup: int,
        *,
        extras: bool = False,
        profile_steps: int = 3,
    ) -> dict:
        """Run ``warmup`` + ``steps`` steps of ``setting`` (and with ``extras`` the FLOP count,
        the host-sync check and the profile); never raises (errors go into the entry)."""
        entry: dict = {"name": name, "status": "ok", "levers": _lever_table(setting)}
        started = time.perf_counter()
        live: dict = {}  # what _run made, released here whatever happens
        try:
            with backend_settings(setting.perf, self.device):
                entry.update(self._run(setting, steps, warmup, extras, profile_steps, live))
        except Exception as exc:  # noqa: BLE001 - one entry's failure must not end the check
            entry["status"] = _error(exc)
        finally:
            if "stream" in live:
                with contextlib.suppress(Exception):
                    live["stream"].close()
            live.clear()
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
        entry["wall_s"] = time.perf_counter() - started
        return entry

    def _run(
        self, setting: Setting, steps: int, warmup: int, extras: bool, profile_steps: int, live
    ) -> dict:
        dev, cuda = self.device, self.device.type == "cuda"
        config = self.config_for(setting)
        perf = setting.perf
        use_amp = cuda and perf.bf16
        model = live["model"] = copy.deepcopy(self.model)
        used, notes = prepare_model(model, perf, dev)
        model.train()
        params = [p for n, p in model.named_parameters() if not n.startswith("mlm_head.")]
        opt, sched = make_optimizer(
            params, config.stage2.lr, config.stage2.weight_decay, 0, 10**9, perf.fused_adamw
        )
        workers = perf.loader_workers
        data = SyntheticBatches(
            setting.batch,
            setting.batch,
            config.vision.resolution,
            self.bert_cfg["vocab_size"],
            self.text_lengths,
            config.model.caption_max_length,
        )
        note = shared_memory_note(workers, 2 * setting.batch * data.images[0].numel())
        if note:
            notes.append(note)
            workers = 0
        total = warmup + steps + (2 + profile_steps if extras else 0)
        stream = live["stream"] = BatchStream(
            data.make, 0, total, workers=workers, pin=cuda and perf.pin_memory, timeout=300
        )
        live["optimizer"] = opt
        out: dict = {
            "notes": notes,
            "in_use": {
                **used,
                "bf16_autocast": use_amp,
                "optimizer": optimizer_kind(opt),
                "loader_workers": workers,
                "pin_memory": cuda and perf.pin_memory,
                "sync_every": setting.sync_every or "end",
            },
            "batch": {"categorical": setting.batch, "elite": setting.batch},
        }
        meter = StepMeter()
        losses: list[float] = []

        def flush() -> None:
            losses.extend(stage_total("stage2", r["terms"], config) for r in meter.flush())

        timer = _PhaseTimer(cuda)

        def step(i: int) -> None:
            timer.mark("wait")
            host = next(stream)
            timer.mark("copy")
            batch = batch_to_device(
                host, dev, augment_images=config.stage2.augment, channels_last=perf.channels_last
            )
            timer.mark("forward")
            loss, logged = stage_loss("stage2", model, batch, config, 1, use_amp)
            timer.mark("backward")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            timer.mark("optimizer")
            grad_norm, lr = optimizer_step(model, params, opt, sched, config.train.grad_clip)
            meter.add(logged, grad_norm, model.logit_scale.detach().exp(), lr, 2 * setting.batch)
            timer.mark("end")
            if setting.sync_every and (i + 1) % setting.sync_every == 0:
                flush()

        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for i in range(warmup):
            step(i)
        flush()
        _sync(dev)
        warm_s = time.perf_counter() - t0
        timer.reset()
        t1 = time.perf_counter()
        for i in range(warmup, warmup + steps):
            step(i)
        flush()
        _sync(dev)
        step_s = (time.perf_counter() - t1) / steps
        out.update(
            {
                "steps": steps,
                "warmup_steps": warmup,
                "warmup_s": warm_s,
                "step_s": step_s,
                "images_per_s": 2 * setting.batch / step_s,
                "phases": timer.summary(steps),
                "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
                "losses": losses,
            }
        )
        if setting.batch not in self.flops:
            try:
                batch = batch_to_device(
                    data.make(0), dev, augment_images=True, channels_last=perf.channels_last
                )
                self.analytic[setting.batch] = analytic_flops(model, config, batch)
                self.flops[setting.batch] = count_step_flops(model, batch, config, use_amp)
            except Exception as exc:  # noqa: BLE001 - the timings stand without FLOPs
                out["flop_count_error"] = _error(exc)
            finally:
                model.zero_grad(set_to_none=True)
        if extras:
            out["host_syncs"] = _guarded(lambda: self._sync_check(step, warmup + steps, dev, opt))
            out["profile"] = _guarded(
                lambda: self._profile(step, warmup + steps + 2, profile_steps, dev)
            )
        return out

    def _sync_check(self, step, first: int, dev: torch.device, opt) -> dict:
        """Host synchronisations during 2 steps with no log flush in between (reads of the
        optimizer's step counters, host tensors by design unless fused, are not counted)."""
        if dev.type == "cuda":
            _sync(dev)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    step(first)
                    step(first + 1)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            found = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
            method = 'torch.cuda.set_sync_debug_mode("warn")'
        else:
            steps = [s["step"] for s in opt.state.values() if "step" in s]
            with HostSyncCounter(exempt=lambda: steps) as counter:
                step(first)
                step(first + 1)
            found = [f"{n} at {where}" for n, where in counter.calls]
            method = "HostSyncCounter (CPU emulation of the CUDA sync debug mode)"
        return {"steps": 2, "count": len(found), "examples": found[:5], "method": method}

    def _profile(self, step, first: int, n: int, dev: torch.device) -> dict:
        from torch.profiler import ProfilerActivity, profile

        cuda = dev.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        _sync(dev)
        with profile(activities=activities) as prof:
            for i in range(first, first + n):
                step(i)
            _sync(dev)
        events = prof.key_averages()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        ops = [e for e in events if not _is_device_event(e)]
        kernels = [e for e in events if _is_device_event(e)]
        return {
            "steps": n,
            "sorted_by": key,
            "top_ops": _top(ops, key, n),
            "top_kernels": _top(kernels, key, n) if cuda else [],
        }


class _PhaseTimer:
    """Time between named points of each step, on the device's own timeline (CUDA events,
    read once in :meth:`summary`) on CUDA and on the host clock on CPU (where execution is
    synchronous). A phase runs from its mark to the next mark."""

    PHASES = {
        "wait": "waiting_for_batch",  # device idle while the host waits for the loader
        "copy": "data_copy_augment",
        "forward": "forward",
        "backward": "backward",
        "optimizer": "optimizer",
        "end": "between_steps",  # log flush (sync) when there is one
    }

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.reset()

    def reset(self) -> None:
        self.marks: list[tuple[str, object, float]] = []

    def mark(self, name: str) -> None:
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self.marks.append((name, event, time.perf_counter()))

    def summary(self, steps: int) -> dict:
        ms: dict[str, float] = {v: 0.0 for v in self.PHASES.values()}
        host_wait = 0.0
        for (name, ev, t), (_, ev2, t2) in zip(self.marks, self.marks[1:], strict=False):
            if name == "wait":
                host_wait += (t2 - t) * 1000
            ms[self.PHASES[name]] += ev.elapsed_time(ev2) if self.cuda else (t2 - t) * 1000
        total = sum(ms.values()) or 1.0
        return {
            "clock": "CUDA events" if self.cuda else "host clock",
            "ms_per_step": {k: v / steps for k, v in ms.items()},
            "share": {k: v / total for k, v in ms.items()},
            "data_loading_share": (ms["waiting_for_batch"] + ms["data_copy_augment"]) / total,
            "host_wait_for_batch_ms_per_step": host_wait / steps,
        }


def _is_device_event(event) -> bool:
    kind = getattr(event, "device_type", None)
    return kind is not None and "CPU" not in str(kind)


def _top(events, key: str, steps: int, limit: int = 10) -> list[dict]:
    timed = [(float(getattr(e, key, 0) or 0), e) for e in events]
    total = sum(t for t, _ in timed) or 1.0
    rows = []
    for us, e in sorted(timed, key=lambda te: -te[0])[:limit]:
        rows.append(
            {
                "name": str(e.key)[:120],
                "calls_per_step": e.count / steps,
                "ms_per_step": us / 1000 / steps,
                "share": us / total,
            }
        )
    return rows


def _error(exc: BaseException) -> str:
    """``error: Type: first line of the message`` (one line)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {message[:300]}"


def _guarded(fn) -> dict:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a failed extra must not end the check
        return {"status": _error(exc)}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _lever_table(setting: Setting) -> dict:
    p = setting.perf
    table = {
        "channels_last": p.channels_last,
        "bf16": p.bf16,
        "tf32": p.tf32,
        "cudnn_benchmark": p.cudnn_benchmark,
        "sdpa": p.sdpa,
        "fused_adamw": p.fused_adamw,
        "compile": p.compile,
        "loader": {"workers": p.loader_workers, "pin_memory": p.pin_memory},
        "sync_free": setting.sync_every != 1,
        "batch": setting.batch,
    }
    table.update(setting.skipped)
    return table


# -- the whole check ---------------------------------------------------------------------------


def run_check(
    device: str,
    tiny: bool,
    steps: int,
    warmup: int,
    budget_s: float,
    batch: int | None = None,
    profile_steps: int = 3,
    only: tuple[str, ...] = (),
    log=None,
) -> dict:
    """Every measurement of the module docstring as one JSON-ready dict."""
    log = log or (lambda line: None)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    threads = torch.get_num_threads()
    if not cuda:
        # Tiny shapes gain nothing from intra-op threads, and on a shared machine a
        # descheduled OpenMP thread slows every op tenfold: timings would be noise.
        torch.set_num_threads(1)
    try:
        return _run_check(dev, name, tiny, steps, warmup, budget_s, batch, profile_steps, only, log)
    finally:
        torch.set_num_threads(threads)


def _run_check(dev, name, tiny, steps, warmup, budget_s, batch, profile_steps, only, log) -> dict:
    import transformers

    began = time.monotonic()
    cuda = dev.type == "cuda"
    peak, peak_row = peak_tflops(name) if cuda else (None, "cpu: no bf16 peak in the table")
    check = Check(dev, tiny, batch)
    workers = min(check.base_config.perf.loader_workers, max(1, (os.cpu_count() or 2) // 2))
    on = lever_settings(True, dev, check.batch_on, check.batch_off, workers)
    off = lever_settings(False, dev, check.batch_on, check.batch_off, workers)
    eager = without(on, "compile", check.batch_off)
    result: dict = {
        "schema": "keepfit_v2-gpu_check-2",
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "tiny_shapes": tiny,
        "steps": steps,
        "warmup_steps": warmup,
        "budget_s": budget_s,
        "peak_bf16_tflops": peak,
        "peak_source": peak_row,
        "batch": {
            "categorical": check.batch_on,
            "elite": check.batch_on,
            "resolution": check.base_config.vision.resolution,
            "text_lengths": list(check.text_lengths),
            "caption_length": check.base_config.model.caption_max_length,
        },
    }
    walls: list[float] = []  # wall time of each entry after levers_on (no compilation)
    on_step = [0.0]

    def timed(entry_name: str, setting: Setting, **kwargs) -> dict:
        if only and entry_name not in only and entry_name != "levers_on":
            return {"name": entry_name, "status": "skipped: not in --only"}
        left = budget_s - (time.monotonic() - began)
        # fp32 entries run up to ~4x slower than levers_on
        need = max([*walls, (steps + warmup) * on_step[0] * 4 + 15])
        if entry_name != "levers_on" and need > left:
            return {
                "name": entry_name,
                "status": f"skipped: time budget (--budget-s {budget_s:g}; {left:.0f} s left)",
            }
        log(f"[{time.monotonic() - began:6.1f} s] {entry_name} ...")
        entry = check.measure(entry_name, setting, steps, warmup, **kwargs)
        if entry_name == "levers_on":
            on_step[0] = entry.get("step_s", 1.0)
        else:
            walls.append(entry["wall_s"])
        if entry["status"] == "ok":
            flops = check.flops.get(setting.batch)
            if flops:
                _add_mfu(entry, flops[0], peak, peak_row)
            else:
                entry["mfu"] = None
                entry["mfu_reason"] = entry.get("flop_count_error", "no FLOP count")
            log(
                f"         {entry['step_s'] * 1000:8.1f} ms/step  "
                f"{entry['images_per_s']:8.1f} images/s  mfu {_pct(entry.get('mfu'))}"
            )
        else:
            log(f"         {entry['status']}")
        return entry

    levers_on = timed("levers_on", on, extras=True, profile_steps=profile_steps)
    result["levers_on"] = levers_on
    for key in ("profile", "host_syncs"):
        if key in levers_on:
            result[key] = levers_on.pop(key)
    entries = {"levers_on": levers_on}
    entries["no_compile"] = (
        {"name": "no_compile", "status": NEEDS_CUDA} if not cuda else timed("no_compile", eager)
    )
    result["levers_off"] = timed("levers_off", off)
    ablation = []
    for lever in LEVERS:
        entry_name = f"no_{lever}"
        if lever in CUDA_ONLY and not cuda:
            entry = {"name": entry_name, "status": NEEDS_CUDA}
        elif lever == "compile":
            entry = entries["no_compile"]
        else:
            entry = timed(entry_name, without(eager, lever, check.batch_off))
        # on CPU nothing compiles: levers_on is the eager reference
        reference = "no_compile" if cuda and lever != "compile" else "levers_on"
        entry = {"lever": lever, "reference": reference, **entry}
        ref = entries[reference]
        if entry.get("status") == "ok" and ref and ref.get("status") == "ok":
            # images/s with the lever on / off: > 1 means the lever pays
            entry["speedup_from_lever"] = ref["images_per_s"] / entry["images_per_s"]
        ablation.append(entry)
    result["ablation"] = ablation
    flops = check.flops.get(check.batch_on)
    if flops:
        result["flops_per_step"], result["flops_by_op"] = flops
        result["flops_per_step_analytic"] = check.analytic[check.batch_on]
    else:
        result["flops_per_step"], result["flops_by_op"] = None, {}
    result["flop_counter"] = (
        "torch.utils.flop_counter.FlopCounterMode over one forward + backward of the real "
        "shapes (matmuls, convolutions, attention; elementwise ops and the optimizer are not "
        "counted, as usual for MFU)"
    )
    for key in ("step_s", "images_per_s", "mfu", "mfu_reason", "achieved_tflops"):
        result[key] = levers_on.get(key)
    if result["mfu_reason"] is None and result["mfu"] is None:
        result["mfu_reason"] = f"levers_on did not run: {levers_on.get('status')}"
    result["peak_memory_gib"] = levers_on.get("peak_memory_gib")
    losses = levers_on.get("losses") or []
    result["losses"] = losses
    result["loss_fell"] = losses[-1] < losses[0] if len(losses) > 1 else None
    off_entry = result["levers_off"]
    if levers_on.get("status") == "ok" and off_entry.get("status") == "ok":
        result["speedup_images_per_s"] = levers_on["images_per_s"] / off_entry["images_per_s"]
    else:
        result["speedup_images_per_s"] = None
    result["wall_s"] = time.monotonic() - began
    return result


def _add_mfu(entry: dict, flops: int, peak: float | None, peak_row: str) -> None:
    entry["flops_per_step"] = flops
    entry["achieved_tflops"] = flops / entry["step_s"] / 1e12
    if peak:
        entry["mfu"] = entry["achieved_tflops"] / peak
        entry["mfu_reason"] = None
    else:
        entry["mfu"] = None
        entry["mfu_reason"] = peak_row


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def summary_line(result: dict, out: Path) -> str:
    on, off = result["levers_on"], result["levers_off"]
    b = result["batch"]
    if on.get("status") != "ok":
        line = f"keepfit_v2 gpu_check on {result['device']}: levers_on {on.get('status')}"
        eager = next((e for e in result["ablation"] if e["lever"] == "compile"), {})
        if eager.get("status") == "ok":
            line += (
                f" | no_compile {eager['step_s'] * 1000:.1f} ms/step "
                f"{eager['images_per_s']:.0f} img/s MFU {_pct(eager.get('mfu'))}"
            )
        return line + f" | {result['wall_s']:.0f} s -> {out}"
    line = (
        f"keepfit_v2 gpu_check on {result['device']}: levers on {b['categorical']}+{b['elite']} "
        f"@{b['resolution']}px {on['step_s'] * 1000:.1f} ms/step {on['images_per_s']:.0f} img/s "
        f"MFU {_pct(result['mfu'])}"
    )
    if off.get("status") == "ok":
        line += (
            f" | levers off {off['batch']['categorical']}+{off['batch']['elite']} "
            f"{off['images_per_s']:.0f} img/s MFU {_pct(off.get('mfu'))} "
            f"-> x{result['speedup_images_per_s']:.2f} images/s"
        )
    syncs = result.get("host_syncs", {})
    if "count" in syncs:
        line += f" | {syncs['count']} host syncs in {syncs['steps']} steps"
    best = [e for e in result["ablation"] if "speedup_from_lever" in e]
    if best:
        top = max(best, key=lambda e: e["speedup_from_lever"])
        line += f" | biggest lever {top['lever']} x{top['speedup_from_lever']:.2f}"
    return line + f" | {result['wall_s']:.0f} s -> {out}"


def log_text(result: dict) -> str:
    """The human-readable log: setup, entries, ablation, FLOPs, profile."""
    lines = [
        f"device: {result['device']}  torch {result['torch']}  cuda {result['cuda']}  "
        f"transformers {result['transformers']}  cpus {result['cpu_count']}",
        f"shapes: {result['batch']}  tiny: {result['tiny_shapes']}",
        f"peak bf16: {result['peak_bf16_tflops']} TFLOPS ({result['peak_source']})",
        f"flops/step (levers_on shapes): {result['flops_per_step']} "
        f"(closed-form estimate of the old check: {result.get('flops_per_step_analytic')})",
        "",
        f"{'entry':<22}{'status':<10}{'ms/step':>10}{'img/s':>10}{'MFU':>8}{'GiB':>8}"
        f"{'x lever':>9}   (x lever: images/s with the lever on / off, against 'reference')",
    ]
    rows = [result["levers_on"], result["levers_off"], *result["ablation"]]
    for e in rows:
        ok = e.get("status") == "ok"
        lines.append(
            f"{e['name']:<22}{('ok' if ok else e.get('status', '')[:60]):<10}"
            + (
                f"{e['step_s'] * 1000:>10.1f}{e['images_per_s']:>10.1f}"
                f"{_pct(e.get('mfu')):>8}"
                f"{(e.get('peak_memory_gib') or 0):>8.1f}"
                + (f"{e['speedup_from_lever']:>9.2f}" if "speedup_from_lever" in e else "")
                if ok
                else ""
            )
        )
    on = result["levers_on"]
    if on.get("status") == "ok":
        lines += ["", f"levers_on in use: {on['in_use']}", f"notes: {on['notes']}"]
        ph = on["phases"]
        lines.append(
            f"phases ({ph['clock']}): "
            + ", ".join(
                f"{k} {v:.1f} ms ({ph['share'][k]:.0%})" for k, v in ph["ms_per_step"].items()
            )
            + f"; host wait for batch {ph['host_wait_for_batch_ms_per_step']:.1f} ms"
        )
    syncs = result.get("host_syncs")
    if syncs:
        lines.append(f"host syncs: {syncs}")
    prof = result.get("profile") or {}
    for table in ("top_ops", "top_kernels"):
        if prof.get(table):
            lines += ["", f"{table} by {prof['sorted_by']} (per step):"]
            lines += [
                f"  {r['ms_per_step']:9.2f} ms {r['share']:6.1%}  {r['name']}" for r in prof[table]
            ]
    if prof.get("status"):
        lines.append(f"profile: {prof['status']}")
    if result["flops_by_op"]:
        lines += ["", "flops by op:"]
        lines += [f"  {v / 1e9:14.3f} GFLOP  {k}" for k, v in result["flops_by_op"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/gpu", help="folder for gpu_check.json/.log")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--tiny",
        "--tiny-shapes",
        dest="tiny",
        action="store_true",
        help="small model and images (CPU smoke test)",
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per entry [8]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per entry [3]")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="categorical and elite batch of levers_on [paper preset: 96 each]",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=360.0,
        help="skip ablation entries that would end after this many seconds [360]",
    )
    parser.add_argument("--only", default="", help="comma-separated entries (levers_on always)")
    parser.add_argument("--json", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    if args.batch_size is not None and args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (the contrastive loss needs pairs)")
    if args.profile_steps < 1:
        parser.error("--profile-steps must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: --device cuda but CUDA is not available; use --device cpu --tiny",
            file=sys.stderr,
        )
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_check(
        args.device,
        args.tiny,
        args.steps,
        args.warmup,
        args.budget_s,
        args.batch_size,
        args.profile_steps,
        tuple(x.strip() for x in args.only.split(",") if x.strip()),
        log,
    )
    given = sys.argv[1:] if argv is None else argv
    result["command"] = " ".join(["python -m fundbench_keepfit_v2.gpu_check", *given])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    line = summary_line(result, out / "gpu_check.json")
    result["summary"] = line
    text = json.dumps(result, indent=1, default=str) + "\n"
    (out / "gpu_check.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    (out / "gpu_check.log").write_text(log_text(result) + "\n" + line + "\n")
    print(line)
    losses = result["losses"]
    if result["levers_on"].get("status") != "ok" or not all(math.isfinite(x) for x in losses):
        print(f"error: levers_on {result['levers_on'].get('status')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
