"""One measured entry of the check: :class:`Check` holds the base model and shapes and
runs ``warmup`` + ``steps`` real stage-2 steps of one :class:`~.levers.Setting`."""

from __future__ import annotations

import contextlib
import copy
import gc
import time

import torch

from fundbench_keepfit_v2.config import Config, make_config
from fundbench_keepfit_v2.data import BatchStream, shared_memory_note
from fundbench_keepfit_v2.gpu_check.flops import analytic_flops, count_step_flops
from fundbench_keepfit_v2.gpu_check.host_syncs import count_host_syncs
from fundbench_keepfit_v2.gpu_check.levers import Setting, lever_table
from fundbench_keepfit_v2.gpu_check.profiling import PhaseTimer, profile_breakdown
from fundbench_keepfit_v2.gpu_check.shapes import (
    CATEGORICAL_TEXT_LEN,
    ELITE_TEXT_LEN,
    V1_BATCH,
    SyntheticBatches,
    paper_shapes,
)
from fundbench_keepfit_v2.gpu_check.util import error_status, guarded, sync
from fundbench_keepfit_v2.model import KeepFITV2
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


class Check:
    """Holds the base model and shapes; :meth:`measure` runs one entry."""

    def __init__(self, device: torch.device, tiny: bool, batch: int | None) -> None:
        self.device, self.tiny = device, tiny
        overrides, self.bert_cfg = paper_shapes(tiny)
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
        entry: dict = {"name": name, "status": "ok", "levers": lever_table(setting)}
        started = time.perf_counter()
        live: dict = {}  # what _run made, released here whatever happens
        try:
            with backend_settings(setting.perf, self.device):
                entry.update(self._run(setting, steps, warmup, extras, profile_steps, live))
        except Exception as exc:  # noqa: BLE001 - one entry's failure must not end the check
            entry["status"] = error_status(exc)
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

        timer = PhaseTimer(cuda)

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
        sync(dev)
        warm_s = time.perf_counter() - t0
        timer.reset()
        t1 = time.perf_counter()
        for i in range(warmup, warmup + steps):
            step(i)
        flush()
        sync(dev)
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
                out["flop_count_error"] = error_status(exc)
            finally:
                model.zero_grad(set_to_none=True)
        if extras:
            out["host_syncs"] = guarded(lambda: self._sync_check(step, warmup + steps, dev, opt))
            out["profile"] = guarded(
                lambda: self._profile(step, warmup + steps + 2, profile_steps, dev)
            )
        return out

    # the extras of levers_on (functions of their own modules; reachable here as before)
    _sync_check = staticmethod(count_host_syncs)
    _profile = staticmethod(profile_breakdown)
