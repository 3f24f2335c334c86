"""KeepFIT V2 training: stage 1 (textual pretraining) then stage 2 (hybrid knowledge injection).

Entry point :func:`train` is the ``fundbench train keepfit_v2`` trainer. Engineering:

* AdamW; linear warm-up (from lr / warmup, as V1's LinearWarmupCosineAnnealingLR) then cosine
  decay to 0 over the stage, stepped every iteration; gradient-norm clipping at 1.0 (V1);
  bf16 autocast on CUDA only.
* Efficiency levers, one switch each in ``perf.*`` (config.py): channels-last, bf16, TF32,
  cuDNN autotuning, SDPA attention in BERT, fused AdamW, ``torch.compile`` of the ResNet
  trunk, ``DataLoader`` worker processes with pinned memory (augmentation on the device).
  The step never waits for the device: loss terms stay there (:class:`StepMeter`) and are
  read once every ``train.log_every`` steps.
* Seeded: torch/numpy/python RNGs from ``train.seed``; the data order, prompt draws,
  augmentations and MLM masks are pure functions of (seed, step) (see ``data.py``), so a run
  resumed from a checkpoint repeats the uninterrupted run's loss curve.
* ``out/last.pt`` (written atomically every ``train.checkpoint_every`` steps, at the end of
  stage 1 and at the end) holds everything to resume; ``out/keepfit_v2.pt`` is the final
  model. ``out/log.jsonl`` has one line per ``train.log_every`` steps (and at checkpoints and
  stage ends): the mean loss per term over those steps (``window``), the last step's lr,
  gradient norm and logit scale, images/s; and events (held-out MLM loss before/after
  stage 1, notes on levers that could not be applied); ``out/summary.json`` the outcome.
* Multi-process with ``torchrun`` (DDP; gloo on CPU, nccl on CUDA); rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from fundbench.api.errors import ConfigError, DataError
from fundbench.util.atomic import write_json_atomic
from fundbench.util.progress import console, make_progress
from fundbench_keepfit_v2 import checkpoint as ckpt
from fundbench_keepfit_v2 import distributed as dist_utils
from fundbench_keepfit_v2.config import Config, PerfConfig, make_config
from fundbench_keepfit_v2.corpus import builtin_sentences, dedupe, folder_sentences, split_holdout
from fundbench_keepfit_v2.data import (
    BatchMaker,
    BatchStream,
    ImageSource,
    augment,
    batch_bytes,
    load_training_data,
    shared_memory_note,
)
from fundbench_keepfit_v2.losses import (
    caption_targets,
    knowledge_loss,
    soft_clip_loss,
    token_ce_sum,
)
from fundbench_keepfit_v2.masking import mask_tokens
from fundbench_keepfit_v2.model import KeepFITV2, bert_config
from fundbench_keepfit_v2.text import (
    bert_config_dict,
    build_bert,
    load_pretrained,
    set_attention,
    tokenize,
    tokenizer_json,
    train_wordpiece,
    with_attention,
    wrap_tokenizer,
)

LAST = "last.pt"
FINAL = "keepfit_v2.pt"
LOG = "log.jsonl"
SUMMARY = "summary.json"
TERMS = ("contrastive", "generative", "knowledge")
IMAGE_KEYS = ("cat_images", "elite_images")


# -- public entry points ------------------------------------------------------------------


def train(
    *,
    preset: str = "tiny",
    data: list[str] | None = None,
    out: Path | None = None,
    resume: bool = False,
    overrides: dict[str, str] | None = None,
    device: str = "cpu",
) -> Path:
    """The ``fundbench train keepfit_v2`` recipe; returns the final checkpoint path."""
    config = make_config(preset, overrides, data)
    if out is None:
        out = Path("keepfit_v2-runs") / f"{config.preset}-{config.digest()[:12]}"
    return run(config, Path(out), resume=resume, device=device)


def run(
    config: Config,
    out: Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    show_progress: bool = True,
) -> Path:
    """Train ``config`` into ``out`` (joining a torchrun process group if there is one)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    info = dist_utils.setup(device)
    try:
        return Trainer(config, Path(out), info, show_progress=show_progress).run(resume)
    finally:
        dist_utils.teardown(info)


# -- schedule ----------------------------------------------------------------------------------


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from 1/warmup to 1 over ``warmup`` steps, then cosine to 0 at ``total``.

    ``step`` is the 0-based index of the optimisation step about to be taken.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(
    params, lr: float, weight_decay: float, warmup: int, total: int, fused: bool = False
):
    """AdamW (no decay on 0-/1-d parameters: biases, norms, logit_scale) + per-step schedule.

    ``fused`` (``perf.fused_adamw``): one fused kernel when every parameter is on CUDA,
    else the multi-tensor ``foreach`` implementation; False: torch's default choice
    (``foreach`` on CUDA, a per-parameter loop on CPU, bit-identical to ``foreach`` there).
    """
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    impl: dict = {}
    if fused:
        impl = {"fused": True} if params and all(p.is_cuda for p in params) else {"foreach": True}
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        **impl,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    return opt, sched


def optimizer_kind(opt: torch.optim.Optimizer) -> str:
    """``fused``, ``foreach`` or ``default`` (what :func:`make_optimizer` chose)."""
    group = opt.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "default"


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)`` keeping this run's implementation: a checkpoint of a
    fused (CUDA) run resumes with foreach on CPU and the other way round."""
    groups = []
    for saved, now in zip(state["param_groups"], opt.param_groups, strict=True):
        saved = dict(saved)
        for key in ("fused", "foreach", "capturable"):
            if key in now:
                saved[key] = now[key]
        groups.append(saved)
    opt.load_state_dict({**state, "param_groups": groups})


# -- efficiency levers (perf.*) ------------------------------------------------------------


@contextlib.contextmanager
def backend_settings(perf: PerfConfig, device: torch.device) -> Iterator[None]:
    """``perf.tf32`` and ``perf.cudnn_benchmark`` for the duration of a run (CUDA only);
    torch's previous settings are restored afterwards."""
    if device.type != "cuda":
        yield
        return
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    torch.set_float32_matmul_precision("high" if perf.tf32 else "highest")
    torch.backends.cudnn.benchmark = perf.cudnn_benchmark
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.benchmark = saved[1]


def prepare_model(
    model: KeepFITV2, perf: PerfConfig, device: torch.device, world: int = 1
) -> tuple[dict, list[str]]:
    """Apply the model-side levers: move to ``device`` (channels-last if ``perf.channels_last``),
    choose BERT's attention (``perf.sdpa``), compile the ResNet trunk (``perf.compile``).

    Returns (what is in use, one-line notes about levers that could not be applied).
    """
    notes = []
    if perf.channels_last:
        model.to(device, memory_format=torch.channels_last)
    else:
        model.to(device)
    attention, note = set_attention(model.text_model.model, perf.sdpa)
    if note:
        notes.append(note)
    compiled = False
    if perf.compile:
        if world > 1:
            notes.append(
                "perf.compile=true: not applied with several processes (the cross-process "
                "batch norm's collectives are not compiled); training eagerly"
            )
        else:
            model.vision_model.compile_trunk(dynamic=False)
            compiled = True
    used = {"channels_last": perf.channels_last, "attention": attention, "compiled": compiled}
    return used, notes


def batch_to_device(
    batch: dict, device: torch.device, *, augment_images: bool, channels_last: bool = True
) -> dict:
    """Copy a host batch to ``device`` (``non_blocking``: asynchronous from pinned memory),
    scale uint8 images to [0, 1] there and augment them there, batched (:func:`augment`,
    parameters from the batch)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        if k in IMAGE_KEYS:
            v = (v.float() / 255.0).contiguous(memory_format=fmt)
        out[k] = v
    if augment_images:
        for images, params in (("cat_images", "cat_aug"), ("elite_images", "elite_aug")):
            if images in out:
                out[images] = augment(out[images], out[params]).contiguous(memory_format=fmt)
    return out


class StepMeter:
    """Each step's logged values, kept on the device until :meth:`flush` reads them all in
    one transfer -- the only host synchronisation of the training loop."""

    def __init__(self) -> None:
        self.rows: list[tuple[list[str], torch.Tensor, float, int]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self,
        terms: dict[str, torch.Tensor],
        grad_norm: torch.Tensor,
        logit_scale: torch.Tensor,
        lr: float,
        items: int,
    ) -> None:
        names = list(terms)
        values = [terms[k].detach().float().reshape(()) for k in names]
        values += [grad_norm.detach().float().reshape(()), logit_scale.detach().float().reshape(())]
        self.rows.append((names, torch.stack(values), lr, items))

    def flush(self) -> list[dict]:
        """[{terms, grad_norm, logit_scale, lr, items}] per step since the last flush."""
        if not self.rows:
            return []
        table = torch.stack([row[1] for row in self.rows]).cpu().tolist()  # the sync
        out = []
        for (names, _, lr, items), values in zip(self.rows, table, strict=True):
            out.append(
                {
                    "terms": dict(zip(names, values[: len(names)], strict=True)),
                    "grad_norm": values[-2],
                    "logit_scale": values[-1],
                    "lr": lr,
                    "items": items,
                }
            )
        self.rows.clear()
        return out


# -- per-step computations (run inside DDP's forward) ---------------------------------------


def mlm_task(model: KeepFITV2, batch: dict) -> dict:
    logits = model.mlm_logits(batch["input_ids"], batch.get("attention_mask"))
    total, count = token_ce_sum(logits, batch["labels"])
    return {"mlm_sum": total, "mlm_count": count}


def stage2_task(model: KeepFITV2, batch: dict) -> dict:
    """Every stage-2 term on the local slice; global-batch terms gather across ranks."""
    cfg = model.config
    w = cfg.loss
    out: dict = {}
    has_cat, has_elite = "cat_images" in batch, "elite_images" in batch
    images = []
    if has_cat:
        images.append(batch["cat_images"])
    if has_elite:
        images.append(batch["elite_images"])
    images = torch.cat(images)
    n_cat = batch["cat_images"].shape[0] if has_cat else 0
    fmap = model.vision_model.feature_map(images)
    img = model.vision_model.projection_head_vision(model.vision_model.pooled(fmap))
    gather = dist_utils.gather_with_grad
    txt_cat = img_cat = txt_elite = img_elite = None
    if has_cat:
        img_cat = img[:n_cat]
        txt_cat = model.encode_text(batch["cat_ids"], batch.get("cat_mask"))
    if has_elite and (w.contrastive > 0 or w.knowledge > 0):
        img_elite = img[n_cat:]
        txt_elite = model.encode_text(batch["elite_ids"], batch.get("elite_mask"))
    if w.contrastive > 0:
        scale = model.scale()
        if has_cat:
            logits = scale * gather(txt_cat) @ gather(img_cat).T
            out["contrastive_cat"] = soft_clip_loss(logits, batch["cat_labels"])
        if has_elite:
            logits = scale * gather(txt_elite) @ gather(img_elite).T
            out["contrastive_elite"] = soft_clip_loss(logits, batch["elite_labels"])
    if w.generative > 0 and has_elite:
        inputs, pad, targets = caption_targets(batch["caption_ids"], batch["caption_mask"])
        logits = model.caption_decoder(fmap[n_cat:], inputs, pad)
        out["generative_sum"], out["generative_count"] = token_ce_sum(logits, targets)
    if w.knowledge > 0 and has_cat and has_elite:
        attended = model.attention(img_cat, gather(img_elite), gather(txt_elite))
        out["knowledge"] = knowledge_loss(txt_cat, attended)
    return out


def combine_stage2(out: dict, config: Config, world: int) -> tuple[torch.Tensor, dict]:
    """Weighted total whose DDP-averaged gradient is the global-batch gradient, plus the
    logged (global) value of each term, as 0-d tensors on the device (no host sync)."""
    w = config.loss
    total = torch.zeros((), device=next(iter(out.values())).device)
    logged = {}
    contrast = [out[k] for k in ("contrastive_cat", "contrastive_elite") if k in out]
    if contrast:
        value = sum(contrast)
        total = total + w.contrastive * value  # identical on every rank: average = itself
        logged["contrastive"] = value.detach()
        for k in ("contrastive_cat", "contrastive_elite"):
            if k in out:
                logged[k] = out[k].detach()
    if "generative_sum" in out:
        count = dist_utils.all_reduce_sum(out["generative_count"].float()).clamp_min(1)
        local = out["generative_sum"] / count
        total = total + w.generative * local * world
        logged["generative"] = dist_utils.all_reduce_sum(local.detach())
    if "knowledge" in out:
        total = total + w.knowledge * out["knowledge"]  # equal local shards: mean of means
        logged["knowledge"] = dist_utils.all_reduce_sum(out["knowledge"].detach()) / world
    return total, logged


def stage_loss(
    stage: str, wrapped, batch: dict, config: Config, world: int, use_amp: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to backpropagate and the logged terms (device tensors) of one step; the
    forward pass runs under bf16 autocast when ``use_amp``."""
    task = mlm_task if stage == "stage1" else stage2_task
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
        out = wrapped(task, batch)
    if stage == "stage1":
        count = dist_utils.all_reduce_sum(out["mlm_count"].float()).clamp_min(1)
        local = out["mlm_sum"] / count
        return config.loss.mlm * local * world, {"mlm": dist_utils.all_reduce_sum(local.detach())}
    return combine_stage2(out, config, world)


def optimizer_step(
    model: KeepFITV2, params, opt, sched, grad_clip: float
) -> tuple[torch.Tensor, float]:
    """Clip, step, schedule, clamp logit_scale (V1); returns (gradient norm tensor, lr used)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    lr = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, math.log(100.0))
    return grad_norm, lr


def stage_total(stage: str, terms: dict[str, float], config: Config) -> float:
    """The weighted loss of one step from its logged terms (host floats)."""
    if stage == "stage1":
        return config.loss.mlm * terms["mlm"]
    return sum(getattr(config.loss, t) * terms[t] for t in TERMS if t in terms)


# -- trainer ---------------------------------------------------------------------------------


class Trainer:
    def __init__(
        self, config: Config, out: Path, info: dist_utils.DistInfo, show_progress: bool = True
    ) -> None:
        self.config = config
        self.out = out
        self.info = info
        self.device = info.device
        self.show_progress = show_progress and info.main
        self.log_file = None
        self.elapsed = 0.0
        self.started = time.perf_counter()
        self.history: dict = {}
        self.perf_used: dict = {}
        self.loader_workers = 0

    # -- setup -------------------------------------------------------------------------------
    def run(self, resume: bool) -> Path:
        threads = torch.get_num_threads()
        if self.config.train.threads > 0:
            torch.set_num_threads(self.config.train.threads)
        try:
            with backend_settings(self.config.perf, self.device):
                return self._run(resume)
        finally:
            torch.set_num_threads(threads)

    def _run(self, resume: bool) -> Path:
        c, info = self.config, self.info
        last, final = self.out / LAST, self.out / FINAL
        state = None
        if resume and last.exists():
            state = ckpt.read(last)
            self._check_resume(state, last)
            if state["stage"] == "done" and final.exists():
                if info.main:
                    console.print(f"{final}: already trained; nothing to resume", highlight=False)
                return final
        elif resume and final.exists():
            return final  # finished earlier (its last.pt was removed)
        elif not resume and (last.exists() or final.exists()):
            raise ConfigError(
                f"{self.out}: already holds a keepfit_v2 run; pass --resume to "
                "continue it or choose another --out"
            )
        if info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.tmp"):  # left by a kill during an atomic write
                stale.unlink()
        self._seed_everything()
        start_time = time.perf_counter()
        with self._status("reading training data"):
            self.data = load_training_data(c)
        corpus = self._corpus()
        corpus_train, corpus_held = split_holdout(corpus, c.stage1.holdout)
        self.corpus_held = corpus_held
        # Tokenizer and text encoder: from the checkpoint, a local BERT, or trained here.
        notes: list[str] = []  # levers that could not be applied, one line each
        if state is not None:
            self.tokenizer = wrap_tokenizer(state["tokenizer"], c.text.max_length)
            bert, note = with_attention(
                lambda **kw: build_bert(state["bert_config"], **kw), c.perf.sdpa
            )
            notes += [note] if note else []
        elif c.text.pretrained:
            self.tokenizer, bert = load_pretrained(c, notes=notes)
        else:
            tok_json = None
            if info.main:
                tok_json = tokenizer_json(
                    train_wordpiece(corpus_train, c.text.vocab_size, c.text.max_length)
                )
            tok_json = dist_utils.broadcast_object(tok_json, info)
            self.tokenizer = wrap_tokenizer(tok_json, c.text.max_length)
            shape = bert_config(c, len(self.tokenizer), self.tokenizer.pad_token_id).to_dict()

            def fresh_bert(**kw):
                torch.manual_seed(c.train.seed)  # the same weights whichever attention
                return build_bert(shape, **kw)

            bert, note = with_attention(fresh_bert, c.perf.sdpa)
            notes += [note] if note else []
        torch.manual_seed(c.train.seed)
        self.model = KeepFITV2(c, bert)
        if state is not None:
            ckpt.load_state(self.model, state["model"], last)
        if info.enabled:
            dist_utils.convert_batchnorm(self.model)
        # channels_last: faster convolutions on CPU (oneDNN) and on CUDA tensor cores.
        used, more = prepare_model(self.model, c.perf, self.device, info.world)
        notes += more
        self.loader_workers = c.perf.loader_workers
        note = shared_memory_note(self.loader_workers, batch_bytes(c))
        if note:
            notes.append(note)
            self.loader_workers = 0
        if self.loader_workers > 0:
            # The workers tokenise; the Rust tokenizer's own threads do not survive a fork.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.perf_used = {
            **used,
            "bf16_autocast": self.device.type == "cuda" and c.perf.bf16,
            "loader_workers": self.loader_workers,
            "pin_memory": self.device.type == "cuda" and c.perf.pin_memory,
        }
        self.wrapped = self.model
        if info.enabled:
            self.wrapped = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        with self._status("decoding training images"):
            self.images = ImageSource(
                self.data.paths,
                c.vision.resolution,
                preload=c.data.preload,
                workers=max(1, c.data.workers),
            )
        self.maker = BatchMaker(
            c, self.data, self.images, self.tokenizer, corpus_train, info.rank, info.world
        )
        self.plan = self._plan()
        position = ("stage1", 0) if self.plan[0][0] == "stage1" else ("stage2", 0)
        if state is not None:
            position = (state["stage"], int(state["stage_step"]))
            self.elapsed = float(state.get("elapsed_s", 0.0))
            self.history = dict(state.get("history", {}))
            self._restore_rng(state)
        self.setup_s = time.perf_counter() - start_time
        if info.main:
            self._open_log(self.global_step(*position))
            for note in notes:
                console.print(f"warning: {note}", highlight=False)
                self._event("perf_note", note=note, at=self.global_step(*position))
        try:
            done = self._train(position, state)
        finally:
            self.images.close()
            if self.log_file is not None:
                self.log_file.close()
        return final if done else last

    def _status(self, what: str):
        return console.status(what) if self.show_progress else contextlib.nullcontext()

    def _check_resume(self, state: dict, path: Path) -> None:
        if state.get("kind") != "training":
            raise ConfigError(f"{path}: not a training checkpoint; cannot resume from it")
        saved = Config.from_dict(state["config"], source=str(path))
        if saved.digest() != self.config.digest():
            a, b = saved.to_dict(), self.config.to_dict()
            diffs = [
                f"{s}.{k}: {a[s][k]!r} -> {b[s][k]!r}"
                for s in a
                if isinstance(a[s], dict)
                for k in a[s]
                if a[s][k] != b[s].get(k)
            ]
            raise ConfigError(
                f"{path}: --resume with a different config ({'; '.join(diffs[:3])}); "
                "rerun with the original settings or a new --out"
            )
        if int(state.get("world_size", 1)) != self.info.world:
            raise ConfigError(
                f"{path}: written by {state.get('world_size')} process(es), resumed "
                f"with {self.info.world}; resume with the same WORLD_SIZE"
            )

    def _seed_everything(self) -> None:
        seed = self.config.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _corpus(self) -> list[str]:
        sentences = builtin_sentences() + list(self.data.texts)
        for folder in self.config.data.corpus:
            sentences += folder_sentences(folder)
        return dedupe(sentences)

    def _plan(self) -> list[tuple[str, int, int]]:
        """[(stage, steps, warmup_steps)]."""
        c = self.config
        plan = []
        if c.loss.mlm > 0 and c.stage1.steps > 0:
            plan.append(("stage1", c.stage1.steps, min(c.stage1.warmup_steps, c.stage1.steps)))
        n = len(self.data.cat_image) or len(self.data.elite_image)
        per_epoch = max(1, math.ceil(n / c.stage2.batch_size))
        steps = c.stage2.steps or max(1, round(c.stage2.epochs * per_epoch))
        warmup = min(steps, round(c.stage2.warmup_epochs * per_epoch))
        if (c.loss.generative > 0 or c.loss.knowledge > 0) and not self.data.elite_image:
            raise DataError(
                f"data.datasets={list(c.data.datasets)}: no elite image-text pairs "
                "for the generative/knowledge terms; add captioned data or set "
                "loss.generative=0 loss.knowledge=0"
            )
        plan.append(("stage2", steps, warmup))
        return plan

    def global_step(self, stage: str, step: int) -> int:
        total = 0
        for name, steps, _ in self.plan:
            if name == stage:
                return total + step
            total += steps
        return total  # done

    # -- loop ----------------------------------------------------------------------------
    def _train(self, position: tuple[str, int], state: dict | None) -> bool:
        c = self.config
        stage, step = position
        stop_after = c.train.stop_after
        if stage == "done":
            self._finish()
            return True
        names = [p[0] for p in self.plan]
        for name, steps, warmup in self.plan[names.index(stage) :]:
            start = step if name == stage else 0
            if name == "stage1":
                params = list(self.model.text_model.model.parameters()) + list(
                    self.model.mlm_head.parameters()
                )
                opt, sched = make_optimizer(
                    params, c.stage1.lr, c.stage1.weight_decay, warmup, steps, c.perf.fused_adamw
                )
                if start == 0:
                    self.history["mlm_holdout_before"] = self.holdout_mlm()
                    self._event(
                        "mlm_holdout",
                        when="before",
                        stage=name,
                        loss=self.history["mlm_holdout_before"],
                        at=self.global_step(name, 0),
                    )
            else:
                params = [
                    p for n, p in self.model.named_parameters() if not n.startswith("mlm_head.")
                ]
                opt, sched = make_optimizer(
                    params, c.stage2.lr, c.stage2.weight_decay, warmup, steps, c.perf.fused_adamw
                )
            if state is not None and name == stage and start > 0:
                load_optimizer_state(opt, state["optimizer"])
                sched.load_state_dict(state["scheduler"])
            stopped = self._run_stage(name, start, steps, opt, sched, params, stop_after)
            if stopped:
                return False
            if name == "stage1":
                self.history["mlm_holdout_after"] = self.holdout_mlm()
                self._event(
                    "mlm_holdout",
                    when="after",
                    stage=name,
                    loss=self.history["mlm_holdout_after"],
                    at=self.global_step(name, steps),
                )
                nxt = "stage2"
                self._checkpoint(nxt, 0, None, None)
        self._checkpoint("done", 0, None, None)
        self._finish()
        return True

    def _run_stage(
        self, name: str, start: int, steps: int, opt, sched, params, stop_after: int
    ) -> bool:
        """Steps ``start .. steps`` of one stage; True if stopped early by train.stop_after.

        Nothing in a step waits for the device: the logged values go to a :class:`StepMeter`,
        which :meth:`_flush` reads every ``train.log_every`` steps, before every checkpoint
        and at the end (so a checkpoint never holds weights from a non-finite loss).
        """
        c, info = self.config, self.info
        make = self.maker.stage1 if name == "stage1" else self.maker.stage2
        use_amp = self.device.type == "cuda" and c.perf.bf16
        self.model.train()
        progress = make_progress() if self.show_progress else None
        task = None
        label = {
            "stage1": "stage 1: textual pretraining (MLM)",
            "stage2": "stage 2: hybrid knowledge injection",
        }[name]
        meter = StepMeter()
        stream = BatchStream(
            make,
            start,
            steps,
            workers=self.loader_workers,
            pin=self.device.type == "cuda" and c.perf.pin_memory,
        )
        try:
            if progress is not None:
                progress.start()
                task = progress.add_task(label, total=steps, completed=start)
            window_start = time.perf_counter()
            for step in range(start, steps):
                batch = batch_to_device(
                    next(stream),
                    self.device,
                    augment_images=c.stage2.augment,
                    channels_last=c.perf.channels_last,
                )
                loss, logged = stage_loss(name, self.wrapped, batch, c, info.world, use_amp)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm, lr = optimizer_step(self.model, params, opt, sched, c.train.grad_clip)
                if name == "stage1":
                    items = c.stage1.batch_size
                else:
                    items = c.stage2.batch_size * ("cat_images" in batch)
                    items += c.stage2.elite_batch_size * ("elite_images" in batch)
                meter.add(logged, grad_norm, self.model.logit_scale.detach().exp(), lr, items)
                if progress is not None:
                    progress.update(task, completed=step + 1)
                g = self.global_step(name, step + 1)
                last_step = step + 1 == steps
                checkpoint_due = g % c.train.checkpoint_every == 0 and not last_step
                stop_due = bool(stop_after) and g >= stop_after and not last_step
                if last_step or checkpoint_due or stop_due or g % c.train.log_every == 0:
                    record = self._flush(name, step + 1, meter, time.perf_counter() - window_start)
                    if progress is not None:
                        progress.update(task, description=f"{label} loss {record['loss']:.3f}")
                    if checkpoint_due:
                        self._checkpoint(name, step + 1, opt, sched)
                    if stop_due:
                        self._checkpoint(name, step + 1, opt, sched)
                        return True
                    window_start = time.perf_counter()
        finally:
            if progress is not None:
                progress.stop()
            stream.close()
        return False

    def _flush(self, name: str, stage_step: int, meter: StepMeter, window_s: float) -> dict:
        """Read the meter (one host synchronisation), check every step's loss is finite, log
        the mean over the window and return that record."""
        c = self.config
        rows = meter.flush()
        first = stage_step - len(rows) + 1
        totals = []
        for i, row in enumerate(rows):
            total = stage_total(name, row["terms"], c)
            if not math.isfinite(total):
                raise FloatingPointError(
                    f"{name} step {first + i}: loss is {total}; lower the learning rate"
                )
            totals.append(total)
        n = len(rows)
        self.elapsed += window_s
        rate_key = "texts_per_s" if name == "stage1" else "images_per_s"
        items = sum(row["items"] for row in rows)
        record = {
            "step": self.global_step(name, stage_step),
            "stage": name,
            "stage_step": stage_step,
            "loss": sum(totals) / n,
            "terms": {k: sum(row["terms"][k] for row in rows) / n for k in rows[-1]["terms"]},
            "lr": rows[-1]["lr"],
            "grad_norm": rows[-1]["grad_norm"],
            "logit_scale": rows[-1]["logit_scale"],
            rate_key: items / window_s if window_s > 0 else None,
            "step_s": window_s / n,
            "window": n,
        }
        if self.info.main:
            self._write_log(record)
        return record

    # -- evaluation of stage 1 -------------------------------------------------------------
    @torch.no_grad()
    def holdout_mlm(self) -> float:
        """Mean masked-token cross-entropy on the held-out corpus slice (fixed masks)."""
        c = self.config
        was = self.model.training
        self.model.eval()
        gen = torch.Generator().manual_seed(c.train.seed + 12345)
        total, count = 0.0, 0
        texts = self.corpus_held
        for i in range(0, len(texts), 64):
            enc = tokenize(self.tokenizer, texts[i : i + 64], c.text.max_length)
            ids, labels = mask_tokens(
                enc, self.tokenizer, c.stage1.mask_prob, gen, whole_word=c.stage1.whole_word
            )
            logits = self.model.mlm_logits(
                ids.to(self.device), enc["attention_mask"].to(self.device)
            )
            s, n = token_ce_sum(logits, labels.to(self.device))
            total += float(s)
            count += int(n)
        self.model.train(was)
        return total / max(1, count)

    # -- files ---------------------------------------------------------------------------
    def _open_log(self, upto: int) -> None:
        path = self.out / LOG
        keep = []
        if path.exists():  # drop lines written after the checkpoint we resume from
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by kill -9
                if rec.get("step", rec.get("at", 0)) <= upto:
                    keep.append(line)
        path.write_text("".join(line + "\n" for line in keep))
        self.log_file = open(path, "a", encoding="utf-8")

    def _write_log(self, record: dict) -> None:
        if self.log_file is not None:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()

    def _event(self, event: str, **fields) -> None:
        if self.info.main:
            self._write_log({"event": event, **fields})

    def _rng_state(self) -> dict:
        numpy_state = np.random.get_state()
        state = {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore_rng(self, state: dict) -> None:
        states = state.get("rng") or []
        if len(states) != self.info.world:
            return
        mine = states[self.info.rank]
        random.setstate(_as_tuple(mine["python"]))
        np_state = mine["numpy"]
        np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], self.device)

    def _common(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "bert_config": bert_config_dict(self.model.text_model.model),
            "tokenizer": tokenizer_json(self.tokenizer),
            "pretraining_datasets": list(self.data.sources),
        }

    def _checkpoint(self, stage: str, step: int, opt, sched) -> None:
        rng = dist_utils.gather_objects(self._rng_state(), self.info)
        if not self.info.main:
            return
        ckpt.save(
            self.out / LAST,
            {
                "kind": "training",
                **self._common(),
                "model": self._cpu_state(),
                "optimizer": opt.state_dict() if opt is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "stage": stage,
                "stage_step": step,
                "global_step": self.global_step(stage, step),
                "data_position": self._data_position(stage, step),
                "rng": rng,
                "world_size": self.info.world,
                "elapsed_s": self.elapsed,
                "history": self.history,
            },
        )

    def _data_position(self, stage: str, step: int) -> dict:
        c = self.config
        if stage == "stage1":
            return {"stream": "corpus", "items_consumed": step * c.stage1.batch_size}
        if stage == "stage2":
            return {
                "stream": "categorical+elite",
                "categorical_consumed": step * c.stage2.batch_size,
                "elite_consumed": step * c.stage2.elite_batch_size,
            }
        return {}

    def _cpu_state(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def _finish(self) -> None:
        if not self.info.main:
            return
        summary = {
            "preset": self.config.preset,
            "config_digest": self.config.digest(),
            "train_s": round(self.elapsed, 3),
            "session_wall_s": round(time.perf_counter() - self.started, 3),
            "world_size": self.info.world,
            "steps": {name: steps for name, steps, _ in self.plan},
            "pretraining_datasets": list(self.data.sources),
            "images": {
                "categorical": len(self.data.cat_image),
                "elite": len(self.data.elite_image),
            },
            "corpus_heldout_sentences": len(self.corpus_held),
            "perf": self.perf_used,
            **self.history,
        }
        ckpt.save(
            self.out / FINAL,
            {"kind": "model", **self._common(), "model": self._cpu_state(), "summary": summary},
        )
        write_json_atomic(self.out / SUMMARY, summary)


def _as_tuple(value):
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value
