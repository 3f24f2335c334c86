"""Launch a fundbench run on a Slurm cluster from Python: one job per (model, dataset) unit
that has work left, in one job array, through submitit. See README.md beside this file.

    python examples/slurm/launch.py --model keepfit_v2 --model flair \\
        --partition gpu --out /shared/$USER/results --cache /shared/$USER/fundbench-cache

Run it again with the same arguments to resume: only the units without their records are
submitted again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fundbench
from fundbench.util.interrupt import RunInterrupted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="repeatable")
    parser.add_argument("--suite", help="benchmark suite (default: fundbench's default)")
    parser.add_argument("--dataset", action="append", default=[], help="repeatable")
    parser.add_argument("--out", type=Path, required=True, help="results, on shared storage")
    parser.add_argument("--cache", type=Path, required=True, help="features, shared storage")
    parser.add_argument("--device", default="cuda", help="device inside each job")
    parser.add_argument("--partition", required=True)
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per job")
    parser.add_argument("--timeout-min", type=int, default=120, help="time limit per job")
    parser.add_argument("--array-parallelism", type=int, default=64, help="jobs at once")
    parser.add_argument("--account", help="Slurm account to charge, if your cluster wants one")
    args = parser.parse_args(argv)

    options = {
        "partition": args.partition,
        "gpus": args.gpus,
        "timeout_min": args.timeout_min,
        "array_parallelism": args.array_parallelism,
    }
    if args.account:
        options["slurm_account"] = args.account  # any submitit Slurm parameter: slurm_<name>
    config = fundbench.RunConfig(
        models=args.model,
        suite=args.suite,
        datasets=args.dataset,
        out=args.out,
        cache=args.cache,
        device=args.device,
        executor="submitit",
        executor_options=options,
    )
    try:
        summary = fundbench.run(config)
    except RunInterrupted as exc:  # Ctrl-C: the jobs still queued or running were cancelled
        print(exc, file=sys.stderr)
        return exc.exit_code
    except fundbench.FundbenchError as exc:  # one line: what failed and what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done: results in {summary.out}/ (run.json, report.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
