"""FLOPs of one training step (counted, and the old closed-form estimate), the bf16 peak
table and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import torch

from fundbench_keepfit_v2.config import Config
from fundbench_keepfit_v2.model import KeepFITV2
from fundbench_keepfit_v2.train import stage_loss

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


def add_mfu(entry: dict, flops: int, peak: float | None, peak_row: str) -> None:
    entry["flops_per_step"] = flops
    entry["achieved_tflops"] = flops / entry["step_s"] / 1e12
    if peak:
        entry["mfu"] = entry["achieved_tflops"] / peak
        entry["mfu_reason"] = None
    else:
        entry["mfu"] = None
        entry["mfu_reason"] = peak_row
