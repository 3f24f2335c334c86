"""Ablation of the KeepFIT V2 training terms on the embedded synthetic suite.

    python -m fundbench_keepfit_v2.ablation --out ablation-runs
    python -m fundbench_keepfit_v2.ablation --out DIR --variants hybrid,contrastive_only

Trains each variant of the tiny preset (or ``--preset``) into ``DIR/train/<variant>``,
evaluates it with the fundbench runner (``RunConfig(weights={"keepfit_v2": checkpoint})``)
into ``DIR/results/<variant>``, and prints mean ACA over the datasets per protocol. Reruns
resume: finished trainings and computed result cells are reused. The table is also written
to ``DIR/ablation.csv`` and ``DIR/ablation.md``.

Variants (``--set`` overrides on top of the preset):

=================  ==========================================================
hybrid             every term on (the preset)
contrastive_only   loss.generative=0 loss.knowledge=0 loss.mlm=0
no_mlm             loss.mlm=0 (no stage-1 textual pretraining)
no_generative      loss.generative=0
no_knowledge       loss.knowledge=0
=================  ==========================================================
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

VARIANTS: dict[str, dict[str, str]] = {
    "hybrid": {},
    "contrastive_only": {"loss.generative": "0", "loss.knowledge": "0", "loss.mlm": "0"},
    "no_mlm": {"loss.mlm": "0"},
    "no_generative": {"loss.generative": "0"},
    "no_knowledge": {"loss.knowledge": "0"},
}


def summarise(results: Path) -> dict[str, float]:
    """Mean ACA over datasets for each protocol column of one results folder."""
    from fundbench.runs.records import load_results

    df = load_results(results)
    df = df[df["metric"] == "aca"]
    row: dict[str, float] = {}
    zs = df[df["task"] == "zero_shot"]
    row["zero_shot"] = zs.groupby("dataset")["value"].mean().mean()
    few = df[df["task"] == "few_shot"]
    for k, part in few.groupby("k"):
        # best adapter per dataset (mean over seeds), then mean over datasets
        per = part.groupby(["dataset", "adapter"])["value"].mean().groupby("dataset").max()
        row[f"few_shot_k{int(k)}_best"] = per.mean()
    lp = df[df["task"] == "linear_probe"]
    for adapter, part in lp.groupby("adapter"):
        row[f"linear_probe_{adapter}"] = part.groupby("dataset")["value"].mean().mean()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and evaluate KeepFIT V2 ablations.")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {', '.join(VARIANTS)}",
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="KEY=VALUE applied to every variant (repeatable)",
    )
    args = parser.parse_args(argv)

    from fundbench import RunConfig, run
    from fundbench.api.errors import FundbenchError
    from fundbench.host.loading import get_host
    from fundbench_keepfit_v2.config import make_config
    from fundbench_keepfit_v2.train import FINAL
    from fundbench_keepfit_v2.train import run as train_run

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    common = dict(item.split("=", 1) for item in args.overrides)
    rows = {}
    try:
        for name in names:
            config = make_config(args.preset, {**common, **VARIANTS[name]})
            folder = args.out / "train" / name
            checkpoint = folder / FINAL
            if not checkpoint.exists():
                checkpoint = train_run(
                    config, folder, device=args.device, resume=(folder / "last.pt").exists()
                )
            results = args.out / "results" / name
            run(
                RunConfig(
                    models=["keepfit_v2"],
                    weights={"keepfit_v2": str(checkpoint)},
                    out=results,
                    device=args.device,
                    report=False,
                ),
                get_host(),
            )
            rows[name] = summarise(results)
            print(
                f"{name}: " + ", ".join(f"{k}={v:.3f}" for k, v in rows[name].items()), flush=True
            )
    except FundbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = pd.DataFrame(rows).T
    table.index.name = "variant"
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "ablation.csv")
    text = table.round(3).to_markdown() if _has_tabulate() else table.round(3).to_string()
    (args.out / "ablation.md").write_text(text + "\n")
    print("\nmean ACA over the synthfundus datasets (few-shot: best adapter per dataset)")
    print(table.round(3).to_string())
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
