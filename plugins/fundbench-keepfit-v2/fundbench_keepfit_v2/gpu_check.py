"""Throughput check of the paper preset's stage-2 step on one device.

    python -m fundbench_keepfit_v2.gpu_check --steps 30                 # CUDA, bf16 autocast
    python -m fundbench_keepfit_v2.gpu_check --device cpu --steps 2 --tiny-shapes

Runs the real stage-2 step (contrastive + generative + knowledge terms, AdamW, clipping) of
the paper architecture -- ResNet-50 at 512 px and a randomly initialised BERT-base shaped
like Bio_ClinicalBERT, so no weights are needed -- on a fixed synthetic batch (random images
and tokens), so the loss must fall. Prints the card, images/s, peak memory, the loss trend
and the fraction of the card's peak dense bf16 throughput reached, from this FLOP estimate
(printed with the result):

* ResNet-50 forward at 224 px = 4.1 GMACs = 8.2 GFLOPs (2 FLOPs per multiply-add), scaled
  by (resolution / 224)^2;
* BERT forward = 2 x (non-embedding parameters) x tokens + 4 x layers x tokens^2 x hidden;
* caption decoder forward = 2 x (decoder parameters) x tokens;
* training step = 3 x forward (forward + backward).

``--json FILE`` writes the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from fundbench_keepfit_v2.config import make_config
from fundbench_keepfit_v2.model import KeepFITV2
from fundbench_keepfit_v2.text import build_bert
from fundbench_keepfit_v2.train import combine_stage2, make_optimizer, stage2_task

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


def peak_tflops(name: str) -> tuple[float | None, str]:
    """(peak bf16 TFLOPS, which table row) for a CUDA device name."""
    upper = name.upper()
    if "H100" in upper:
        row = "H100 PCIe" if "PCIE" in upper else "H100 NVL" if "NVL" in upper else "H100 SXM"
        return PEAK_BF16_TFLOPS[row], row
    for row in ("H200", "A100", "L40S", "L4", "A10"):
        if row in upper:
            return PEAK_BF16_TFLOPS[row], row
    return None, "unknown card: no peak in the table"


def _paper_shapes(tiny: bool) -> tuple[dict, dict]:
    overrides = {"stage2.augment": "false"}
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


def flops_per_step(
    model: KeepFITV2, config, n_images: int, text_lens: list[int], caption_tokens: int
) -> dict:
    res = config.vision.resolution
    if config.vision.arch == "resnet50":
        vision = RESNET50_GFLOPS_224 * 1e9 * (res / 224) ** 2
    else:  # count the small ResNet's multiply-adds directly
        vision = _conv_flops(model.vision_model.model, res)
    bert = model.text_model.model
    h, layers = bert.config.hidden_size, bert.config.num_hidden_layers
    non_embed = sum(
        p.numel()
        for n, p in bert.named_parameters()
        if not n.startswith("embeddings.") and not n.startswith("pooler.")
    )
    text = sum(2 * non_embed * t + 4 * layers * t * t * h for t in text_lens)
    dec_params = sum(
        p.numel() for n, p in model.caption_decoder.named_parameters() if n.startswith("decoder.")
    )
    dec_vocab = model.caption_decoder.token_embed.weight.numel()
    decoder = 2 * (dec_params + dec_vocab) * caption_tokens
    forward = vision * n_images + text + decoder
    return {
        "vision_gflops_per_image_fwd": vision / 1e9,
        "text_gflops_fwd": text / 1e9,
        "decoder_gflops_fwd": decoder / 1e9,
        "step_tflops": 3 * forward / 1e12,
    }


def _conv_flops(module: torch.nn.Module, res: int) -> float:
    total = 0.0
    hooks = []

    def hook(m, _inp, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        module.eval()(torch.zeros(1, 3, res, res))
    for h in hooks:
        h.remove()
    return total


def run_check(steps: int, device: str, tiny: bool, batch_size: int | None = None) -> dict:
    overrides, bert_cfg = _paper_shapes(tiny)
    if batch_size:
        overrides.update(
            {"stage2.batch_size": str(batch_size), "stage2.elite_batch_size": str(batch_size)}
        )
    config = make_config("paper", overrides)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = KeepFITV2(config, build_bert(bert_cfg)).to(dev).train()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    b, be = config.stage2.batch_size, config.stage2.elite_batch_size
    res, vocab = config.vision.resolution, bert_cfg["vocab_size"]
    lc, le = (CATEGORICAL_TEXT_LEN, ELITE_TEXT_LEN) if not tiny else (8, 16)
    lcap = config.model.caption_max_length
    g = torch.Generator().manual_seed(0)

    def tokens(n, length):
        ids = torch.randint(5, vocab, (n, length), generator=g)
        ids[:, 0] = 2
        return ids

    batch = {
        "cat_images": torch.rand(b, 3, res, res, generator=g),
        "cat_ids": tokens(b, lc),
        "cat_mask": torch.ones(b, lc, dtype=torch.long),
        "cat_labels": torch.randint(0, max(2, b // 3), (b,), generator=g),
        "elite_images": torch.rand(be, 3, res, res, generator=g),
        "elite_ids": tokens(be, le),
        "elite_mask": torch.ones(be, le, dtype=torch.long),
        "elite_labels": torch.arange(be),
        "caption_ids": tokens(be, lcap),
        "caption_mask": torch.ones(be, lcap, dtype=torch.long),
    }
    batch = {k: v.to(dev) for k, v in batch.items()}
    if dev.type == "cuda":
        for k in ("cat_images", "elite_images"):
            batch[k] = batch[k].contiguous(memory_format=torch.channels_last)
    params = [p for n, p in model.named_parameters() if not n.startswith("mlm_head.")]
    opt, sched = make_optimizer(params, config.stage2.lr, config.stage2.weight_decay, 0, 10**9)
    use_amp = dev.type == "cuda"
    if use_amp:
        torch.cuda.reset_peak_memory_stats(dev)
    losses, times = [], []
    for _ in range(steps):
        if use_amp:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = stage2_task(model, batch)
        loss, _ = combine_stage2(out, config, 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if use_amp:
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    timed = times[2:] if len(times) > 3 else times[-1:]
    step_s = sum(timed) / len(timed)
    n_images = b + be
    flops = flops_per_step(model, config, n_images, [lc] * b + [le] * be, be * (lcap - 1))
    achieved = flops["step_tflops"] / step_s
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak, row = peak_tflops(name) if dev.type == "cuda" else (None, "cpu: no peak in the table")
    return {
        "device": name,
        "tiny_shapes": tiny,
        "steps": steps,
        "batch": {
            "categorical": b,
            "elite": be,
            "resolution": res,
            "text_lengths": [lc, le],
            "caption_length": lcap,
        },
        "bf16_autocast": use_amp,
        "step_s": step_s,
        "images_per_s": n_images / step_s,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(dev) / 2**30) if use_amp else None,
        "losses": losses,
        "loss_fell": losses[-1] < losses[0] if len(losses) > 1 else None,
        "flops": flops,
        "achieved_tflops": achieved,
        "peak_bf16_tflops": peak,
        "peak_source": row,
        "fraction_of_peak": (achieved / peak) if peak else None,
        "assumption": (
            "ResNet-50 fwd 8.2 GFLOPs at 224 px (4.1 GMACs x 2) x (res/224)^2; "
            "BERT fwd 2*params*tokens + 4*layers*tokens^2*hidden; decoder "
            "2*params*tokens; step = 3 x forward; timing excludes the first 2 steps"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--tiny-shapes", action="store_true", help="small model and images (CPU smoke test)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="categorical and elite batch size [paper preset: 24 each]",
    )
    parser.add_argument("--json", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: --device cuda but CUDA is not available; use --device cpu --tiny-shapes",
            file=sys.stderr,
        )
        return 2
    result = run_check(args.steps, args.device, args.tiny_shapes, args.batch_size)
    trend = ", ".join(f"{x:.3f}" for x in result["losses"])
    frac = result["fraction_of_peak"]
    print(f"device: {result['device']}  (bf16 autocast: {result['bf16_autocast']})")
    print(f"batch: {result['batch']}")
    print(f"images/s: {result['images_per_s']:.1f}  (step {result['step_s'] * 1000:.1f} ms)")
    if result["peak_memory_gib"] is not None:
        print(f"peak memory: {result['peak_memory_gib']:.2f} GiB")
    print(f"loss trend: {trend}")
    print(
        f"estimated {result['flops']['step_tflops']:.3f} TFLOP/step -> "
        f"{result['achieved_tflops']:.1f} TFLOPS achieved"
    )
    print(
        f"peak bf16: {result['peak_bf16_tflops']} TFLOPS ({result['peak_source']}); "
        f"fraction of peak: {'n/a' if frac is None else f'{frac:.1%}'}"
    )
    print(f"assumption: {result['assumption']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    if not all(math.isfinite(x) for x in result["losses"]):
        print("error: non-finite loss", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
