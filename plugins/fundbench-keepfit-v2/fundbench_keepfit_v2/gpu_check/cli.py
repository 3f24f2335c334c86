"""Training-efficiency check of the paper preset's stage-2 step on one device (issue 13).

The command line of ``python -m fundbench_keepfit_v2.gpu_check`` (see the package docstring).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from fundbench_keepfit_v2.gpu_check.report import write_outputs
from fundbench_keepfit_v2.gpu_check.run import run_check


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
    line = write_outputs(result, Path(args.out), args.json)
    print(line)
    losses = result["losses"]
    if result["levers_on"].get("status") != "ok" or not all(math.isfinite(x) for x in losses):
        print(f"error: levers_on {result['levers_on'].get('status')}", file=sys.stderr)
        return 1
    return 0
