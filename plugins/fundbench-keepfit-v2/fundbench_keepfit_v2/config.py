"""Configuration of the KeepFIT V2 plugin: typed sections, the ``tiny`` and ``paper`` presets,
and dotted ``--set section.key=value`` overrides.

Every default that comes from an upstream source says so in a comment; the rest are
fundbench's own choices (V2's hyperparameters are not public, see
the project's KeepFIT reference notes, ``keepfit.md`` section 2.3). ``README.md`` has the full
table.

Batch size and learning rate of the GPU preset
-----------------------------------------------
``paper`` trains with 96 categorical + 96 elite images per step (V1: 24 + 24): at 512 px and
bf16 that measured 53 GiB peak on one 80 GB H100 (``docs/gpu/gpu_check_b96.json``), leaving
room on 80-141 GB cards, and it about doubles images/s over 24 + 24. The rule for the
learning rate is **no scaling**: ``stage2.lr`` stays V1's 1e-4 whatever the batch (V2
publishes no optimisation settings, V1's value is the only published one, and we do not
guess a scaling rule for AdamW on top of it). What scales with the batch is the number of
steps: budgets and warm-up are given in epochs (``stage2.epochs``, ``stage2.warmup_epochs``),
so a 4x larger batch takes 4x fewer, larger steps over the same data. Batch sizes are global: with
``torchrun`` each of the N processes takes 1/N of them, so set ``stage2.batch_size=N*96``
to keep 96 per GPU. ``--set stage2.batch_size=24 stage2.elite_batch_size=24`` gives V1's.

Training-efficiency levers (``perf.*``)
----------------------------------------
Each lever of issue 13 is one switch in :class:`PerfConfig`, so each can be measured on and
off (``python -m fundbench_keepfit_v2.gpu_check`` does). They choose *how* the recipe is
computed (kernels, memory layout, precision on CUDA, the data pipeline), not *what*: like
the device, they are not part of :meth:`Config.digest` and a run may be resumed with other
levers. The CPU preset keeps the levers that would change its numerics on CPU off;
``perf.bf16``/``tf32``/``cudnn_benchmark``/``pin_memory`` act on CUDA only.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field

from fundbench.api.errors import ConfigError

#: The embedded synthetic suite, the default training data of both presets.
SYNTH_DATASETS = ("synth_dr", "synth_glaucoma", "synth_multidisease", "synth_ffa", "synth_oct")
BIO_CLINICALBERT = "emilyalsentzer/Bio_ClinicalBERT"


@dataclass
class VisionConfig:
    #: ``resnet50`` (V1: torchvision ResNet-50, fc = Identity) or ``resnet_small``
    #: (torchvision ResNet with BasicBlocks, ``layers`` and ``width`` below).
    arch: str = "resnet50"
    #: Blocks per stage and base width for ``resnet_small`` (ignored for resnet50).
    layers: tuple[int, ...] = (1, 1, 1, 1)
    width: int = 32
    #: A local torchvision ResNet-50 weights file (e.g. ``resnet50-11ad3fa6.pth``, the
    #: IMAGENET1K_V2 weights V1 starts from). Empty: random init (nothing is downloaded).
    weights: str = ""
    #: Input size; images are resized keeping the aspect ratio and zero-padded at the
    #: right/bottom to a square, in [0, 1] without mean/std (V1/FLAIR preprocessing).
    resolution: int = 512


@dataclass
class TextConfig:
    #: Local folder or Hugging Face id of a BERT to start from (V1: Bio_ClinicalBERT).
    #: Empty: a randomly initialised BERT of the sizes below with a WordPiece vocabulary
    #: trained on the corpus (the ``tiny`` preset).
    pretrained: str = BIO_CLINICALBERT
    vocab_size: int = 4000
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    dropout: float = 0.1
    #: V1 sets the tokenizer's model_max_length to 256 (keepfit.md section 3).
    max_length: int = 256


@dataclass
class ModelConfig:
    proj_dim: int = 512  # V1 KeepFITModel default
    logit_scale_init: float = 0.07  # V1: logit_scale = log(1 / 0.07)
    attention_heads: int = 2  # V1 MultiHeadAttention(512, 2 heads)
    attention_dropout: float = 0.5  # V1
    #: Caption decoder (generative branch): sizes of V1's FFA report generator (R2Gen-style
    #: 3 layers, d_model 512, d_ff 512, 8 heads, dropout 0.1, max length 90).
    decoder_layers: int = 3
    decoder_dim: int = 512
    decoder_heads: int = 8
    decoder_ff: int = 512
    decoder_dropout: float = 0.1
    caption_max_length: int = 90


@dataclass
class LossConfig:
    """Weights of the training terms; 0 switches a term off."""

    contrastive: float = 1.0  # V1: L_clip(categorical) + L_clip(elite), weight 1
    generative: float = 1.0  # ours
    knowledge: float = 100.0  # V1: 100 * MSE(text_cat, MHA(img_cat, img_elite, txt_elite))
    mlm: float = 1.0  # stage 1 (textual pretraining); 0 skips stage 1


@dataclass
class Stage1Config:
    """Preliminary textual pretraining: masked-language modelling of the text encoder."""

    steps: int = 2000
    batch_size: int = 24  # RetCoP step 0
    lr: float = 1e-5  # RetCoP step 0
    weight_decay: float = 0.05  # RetCoP step 0
    warmup_steps: int = 100
    mask_prob: float = 0.15  # BERT / RetCoP step 0
    whole_word: bool = True  # RetCoP uses DataCollatorForWholeWordMask
    #: Fraction of corpus sentences held out to measure MLM loss before/after.
    holdout: float = 0.1


@dataclass
class Stage2Config:
    """Hybrid image-text knowledge injection."""

    #: Length in epochs over the categorical data, or in steps when ``steps`` > 0.
    epochs: float = 15.0  # V1 main_pretrain.py default
    steps: int = 0
    #: Global categorical images per step. V1 main_pretrain.py: 24; ours 96 on a GPU
    #: (module docstring: the learning rate is not scaled).
    batch_size: int = 96
    #: Elite (image, caption) pairs per step; V1 draws as many as the main batch.
    elite_batch_size: int = 96
    lr: float = 1e-4  # V1, kept for every batch size
    weight_decay: float = 1e-5  # V1
    warmup_epochs: float = 1.0  # V1
    #: Light geometric/photometric augmentation of training images (no flips: captions
    #: name the eye).
    augment: bool = True


@dataclass
class DataConfig:
    #: Registered fundbench dataset names or MM-Retinal style folders. Only TRAIN splits
    #: of registered datasets are used.
    datasets: tuple[str, ...] = SYNTH_DATASETS
    #: Categorical sampling: ``none`` (uniform over images, as V1) or ``dataset`` (every
    #: dataset equally often: small datasets are oversampled).
    balance: str = "none"
    #: Extra folders of ``.txt`` files for stage 1 (e.g. MM-Retinal-Text).
    corpus: tuple[str, ...] = ()
    #: Decode all training images once into memory (small data only).
    preload: bool = False
    workers: int = 4


@dataclass
class TrainConfig:
    seed: int = 42  # V1 main_pretrain.py default
    grad_clip: float = 1.0  # V1
    checkpoint_every: int = 500
    #: Loss terms stay on the device between log points: the host reads them (one
    #: synchronisation) every ``log_every`` steps, at checkpoints and at the end of a stage,
    #: and a log line holds the mean over those steps. 1 = a line (and a sync) every step.
    log_every: int = 20
    #: Stop (after checkpointing) once this many global steps are done; 0 = run to the end.
    #: Lets a long run be split into slices; ``--resume`` continues.
    stop_after: int = 0
    #: CPU threads for torch (0 = torch's default).
    threads: int = 0


@dataclass
class PerfConfig:
    """Training-efficiency levers (see the module docstring); defaults are the GPU preset's."""

    #: Model and image batches in ``torch.channels_last`` (NHWC convolutions on cuDNN and
    #: oneDNN). The CPU preset has always trained this way.
    channels_last: bool = True
    #: bf16 autocast of the forward pass on CUDA (on CPU training stays fp32).
    bf16: bool = True
    #: TF32 tensor cores for the fp32 matmuls outside autocast (CUDA only).
    tf32: bool = True
    #: cuDNN autotuning of convolution algorithms for the fixed image shapes (CUDA only).
    cudnn_benchmark: bool = True
    #: BERT attention through ``torch.nn.functional.scaled_dot_product_attention``
    #: (transformers ``attn_implementation="sdpa"``, transformers' own default); false:
    #: transformers' ``eager`` attention. If the installed transformers cannot, training
    #: says so in one line and keeps the attention transformers gives.
    sdpa: bool = True
    #: AdamW as one fused kernel on CUDA (``fused=True``), multi-tensor ``foreach`` elsewhere
    #: (bit-identical to the per-parameter loop on CPU); false: torch's default choice.
    fused_adamw: bool = True
    #: ``torch.compile`` the ResNet trunk (fixed shapes, about 3/4 of the step's FLOPs). The
    #: text encoder and caption decoder stay eager: their lengths change every batch (texts
    #: are padded to the longest of the batch, and V1's pooling averages over the padding, so
    #: padding to a fixed length would change the model). Single-process runs only.
    compile: bool = True
    #: Build batches in N ``DataLoader`` worker processes (decode + resize to uint8 only;
    #: augmentation runs batched on the device). 0: one prefetch thread in this process.
    loader_workers: int = 8
    #: Page-locked host batches, copied with ``non_blocking=True`` (CUDA only).
    pin_memory: bool = True


@dataclass
class Config:
    preset: str = "paper"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> Config:
        config = cls()
        for section, values in data.items():
            if section == "preset":
                config.preset = str(values)
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {section!r} must be a mapping")
            for key, value in values.items():
                _assign(config, f"{section}.{key}", value, source)
        return config

    def digest(self) -> str:
        """SHA-256 of everything that changes the trained weights (logging cadence excluded;
        the ``perf`` levers excluded, like the device: they choose how, not what)."""
        data = self.to_dict()
        data.pop("perf")
        for key in ("checkpoint_every", "log_every", "stop_after", "threads"):
            data["train"].pop(key)
        data["data"].pop("workers")
        data["data"].pop("preload")
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def check(self) -> Config:
        """Cross-field checks, raised as one-line ConfigErrors."""

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"config {key}={_get(self, key)!r}: {what}")

        need(
            self.vision.arch in ("resnet50", "resnet_small"),
            "vision.arch",
            "choose resnet50 or resnet_small",
        )
        need(self.vision.resolution >= 32, "vision.resolution", "must be at least 32")
        need(
            len(self.vision.layers) == 4 and min(self.vision.layers) >= 1,
            "vision.layers",
            "give four positive block counts, e.g. 1,1,1,1",
        )
        need(
            self.text.hidden % self.text.heads == 0,
            "text.hidden",
            f"must be divisible by text.heads={self.text.heads}",
        )
        need(self.text.layers >= 1, "text.layers", "need at least one layer")
        need(
            self.model.proj_dim % self.model.attention_heads == 0,
            "model.proj_dim",
            f"must be divisible by model.attention_heads={self.model.attention_heads}",
        )
        need(
            self.model.decoder_dim % self.model.decoder_heads == 0,
            "model.decoder_dim",
            f"must be divisible by model.decoder_heads={self.model.decoder_heads}",
        )
        for name in ("contrastive", "generative", "knowledge", "mlm"):
            need(getattr(self.loss, name) >= 0, f"loss.{name}", "weights must be >= 0 (0 = off)")
        need(
            any(getattr(self.loss, n) > 0 for n in ("contrastive", "generative", "knowledge")),
            "loss.contrastive",
            "at least one stage-2 term (contrastive, generative, knowledge) must be on",
        )
        need(0 < self.stage1.mask_prob < 1, "stage1.mask_prob", "must be in (0, 1)")
        need(0 < self.stage1.holdout < 1, "stage1.holdout", "must be in (0, 1)")
        need(self.stage1.batch_size >= 1, "stage1.batch_size", "must be positive")
        need(self.stage2.batch_size >= 2, "stage2.batch_size", "need at least 2 for contrast")
        need(self.stage2.elite_batch_size >= 0, "stage2.elite_batch_size", "must be >= 0")
        need(
            self.stage2.steps > 0 or self.stage2.epochs > 0,
            "stage2.epochs",
            "set stage2.epochs or stage2.steps",
        )
        need(self.train.checkpoint_every >= 1, "train.checkpoint_every", "must be positive")
        need(self.train.grad_clip > 0, "train.grad_clip", "must be positive")
        need(self.train.log_every >= 1, "train.log_every", "must be positive")
        need(self.perf.loader_workers >= 0, "perf.loader_workers", "must be >= 0 (0 = in-process)")
        need(len(self.data.datasets) >= 1, "data.datasets", "name at least one dataset")
        need(self.data.balance in ("none", "dataset"), "data.balance", "choose none or dataset")
        return self


# -- presets ---------------------------------------------------------------------------------


def paper_preset() -> Config:
    """ResNet-50 + Bio_ClinicalBERT at 512 px, V1 optimisation where V2's is unknown, 96 + 96
    images per step at V1's learning rate (module docstring), every ``perf`` lever on."""
    return Config(preset="paper")


def tiny_preset() -> Config:
    """CPU preset: about 3-4 minutes on 2 cores, trained on the embedded suite's TRAIN splits.

    Chosen by measurement on a 2-core machine (README "Measured"): 128 px with a width-32
    BasicBlock ResNet gave the best accuracy per second among 128-192 px / width 16-32.
    """
    return Config(
        preset="tiny",
        vision=VisionConfig(arch="resnet_small", layers=(1, 1, 1, 1), width=32, resolution=128),
        text=TextConfig(
            pretrained="",
            vocab_size=2000,
            hidden=128,
            layers=3,
            heads=2,
            intermediate=256,
            dropout=0.1,
            max_length=64,
        ),
        model=ModelConfig(
            decoder_layers=1,
            decoder_dim=128,
            decoder_heads=4,
            decoder_ff=256,
            decoder_dropout=0.1,
            caption_max_length=64,
        ),
        loss=LossConfig(),
        stage1=Stage1Config(
            steps=80, batch_size=32, lr=1e-3, weight_decay=0.01, warmup_steps=8, whole_word=True
        ),
        stage2=Stage2Config(
            epochs=0.0,
            steps=450,
            batch_size=32,
            elite_batch_size=16,
            lr=2e-3,
            weight_decay=1e-4,
            warmup_epochs=0.5,
            augment=True,
        ),
        data=DataConfig(preload=True, workers=2),
        train=TrainConfig(checkpoint_every=100, log_every=1),
        # Off: what would change the CPU numerics or cost more than it gives on 2 cores
        # (compile: ~45 s of compilation for a 3-minute run; worker processes: the images
        # are preloaded). fused_adamw means foreach on CPU: bit-identical, kept on.
        perf=PerfConfig(compile=False, loader_workers=0, tf32=False, cudnn_benchmark=False),
    )


PRESETS = {"tiny": tiny_preset, "paper": paper_preset}


def make_config(
    preset: str, overrides: dict[str, str] | None = None, data: list[str] | None = None
) -> Config:
    """A preset with ``--set`` overrides and ``--data`` applied, checked."""
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown keepfit_v2 preset {preset!r}{hint} (choose from {', '.join(PRESETS)})"
        )
    config = PRESETS[preset]()
    for key, value in (overrides or {}).items():
        _assign(config, key, value, "--set")
    if data:
        config.data.datasets = tuple(str(d) for d in data)
    return config.check()


# -- dotted keys -----------------------------------------------------------------------------


def keys(config: Config | None = None) -> list[str]:
    """Every settable dotted key, e.g. ``loss.generative``."""
    config = config or Config()
    out = []
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            out += [f"{section.name}.{f.name}" for f in dataclasses.fields(value)]
    return out


def _get(config: Config, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def _assign(config: Config, key: str, value, source: str) -> None:
    section, dot, name = key.partition(".")
    target = getattr(config, section, None) if dot else None
    if (
        target is None
        or not dataclasses.is_dataclass(target)
        or name not in {f.name for f in dataclasses.fields(target)}
    ):
        close = difflib.get_close_matches(key, keys(config), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"{source}: unknown keepfit_v2 config key {key!r}; {hint}"
            f"keys are section.name, e.g. loss.generative, stage2.steps"
        )
    hint = typing.get_type_hints(type(target))[name]
    setattr(target, name, _coerce(value, hint, key, source))


def _coerce(value, hint, key: str, source: str):
    def bad(expected: str):
        return ConfigError(f"{source}: {key}={value!r} is not {expected}")

    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise bad("a comma-separated list")
        return tuple(_coerce(p, item, key, source) for p in parts)
    if origin in (typing.Union, types.UnionType):
        raise bad("supported")  # no optional fields in this config
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise bad("a boolean (true/false)")
    if hint is int:
        if isinstance(value, bool):
            raise bad("an integer")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError):
            raise bad("an integer") from None
    if hint is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if hint is str:
        return str(value)
    raise bad(f"of type {hint}")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
