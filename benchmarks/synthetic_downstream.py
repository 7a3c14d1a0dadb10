r"""Does the default pre-training beat random initialisation downstream? Per seed, synthetic data.

For every seed: the default federated pre-training (``python -m fedvssl.main seed=S``), then the
same fine-tuning recipe from its last global model and from a random backbone (retrieval R@k,
then fine-tuning and the 10-clip test), the two fine-tunings side by side, one CPU thread each.
Every step is a command a user can run; a step whose results are already in ``--work-dir`` is not
run again, so a killed sweep continues where it stopped. The report holds each seed's numbers and
their mean and standard deviation.

    python -m benchmarks.synthetic_downstream --seeds 7 8 9 \\
        --output benchmarks/results/cpu/synthetic_downstream.json

``--data-dir`` points both the pre-training and the fine-tuning at another prepared synthetic set
(e.g. one made with ``dataset_preparation.py --synthetic-light-change``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine_info, write_report

# The fine-tuning recipe of docs/results.md: the reference's optimiser, 15 epochs, x0.1 at epoch 10.
FINETUNE = ["epochs=15", "optimizer.milestones=[10]", "workers=0", "progress=false"]
METRICS = ("R@1", "R@5", "R@10", "top1", "top5")


def _run(args: list[str], threads: int | None = None) -> subprocess.Popen[bytes]:
    env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL)


def _wait(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.wait() != 0:
            raise RuntimeError(f"{' '.join(map(str, process.args))} failed")  # type: ignore[arg-type]


def pretrain(seed: int, work: Path, overrides: list[str]) -> dict[str, Any]:
    """Run (or find) the default pre-training of ``seed``; return its last round and wall time."""
    run_dir = work / f"pretrain_seed{seed}"
    metrics = run_dir / "metrics.json"
    started = time.perf_counter()
    if not metrics.is_file():
        _wait(_run(["-m", "fedvssl.main", f"seed={seed}", f"hydra.run.dir={run_dir}", *overrides]))
    last = json.loads(metrics.read_text())["rounds"][-1]
    checkpoint = run_dir / "fedvssl_results" / f"round-{last['round']}-weights.array.npz"
    return {
        "checkpoint": str(checkpoint), "last_round": last["round"],
        "ratio": last["train_loss"] / last["trivial_loss"],
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


def finetune_both(
    seed: int, work: Path, checkpoint: str, overrides: list[str]
) -> dict[str, dict[str, float]]:
    """Fine-tune from ``checkpoint`` and from a random backbone, side by side."""
    jobs = {"pretrained": checkpoint, "random": "null"}
    running = []
    for name, pretrained in jobs.items():
        run_dir = work / f"finetune_{name}_seed{seed}"
        if not (run_dir / "results.json").is_file():
            args = ["-m", "fedvssl.finetune", f"pretrained={pretrained}", f"seed={seed}",
                    f"hydra.run.dir={run_dir}", *FINETUNE, *overrides]  # fmt: skip
            running.append(_run(args, threads=1))
    _wait(*running)
    results = {}
    for name in jobs:
        data = json.loads((work / f"finetune_{name}_seed{seed}" / "results.json").read_text())
        results[name] = {k: float(data[k]) for k in METRICS}
    return results


def summary(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Mean and standard deviation (over seeds) of every metric, for both backbones."""
    out: dict[str, dict[str, list[float]]] = {}
    for name in ("pretrained", "random"):
        values = {k: [s[name][k] for s in per_seed] for k in METRICS}
        out[name] = {k: [float(np.mean(v)), float(np.std(v))] for k, v in values.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/synthetic_downstream"))
    parser.add_argument("--pretrain", nargs="*", default=[], help="overrides of fedvssl.main")
    parser.add_argument("--data-dir", help="data_dir of both steps (default: the configs' data)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    data = [f"data_dir={args.data_dir}"] if args.data_dir else []
    pretraining = [*args.pretrain, *data]

    report: dict[str, Any] = {
        "benchmark": "synthetic_downstream", "machine": machine_info(),
        "pretrain_overrides": pretraining, "finetune_overrides": [*FINETUNE, *data], "seeds": [],
    }  # fmt: skip
    for seed in args.seeds:
        row: dict[str, Any] = {
            "seed": seed,
            "pretraining": pretrain(seed, args.work_dir, pretraining),
        }
        row |= finetune_both(seed, args.work_dir, row["pretraining"]["checkpoint"], data)
        report["seeds"].append(row)
        report["summary"] = summary(report["seeds"])
        write_report(report, args.output)
        print(f"seed {seed}: " + ", ".join(
            f"{k} {row['pretrained'][k]:.2f} vs {row['random'][k]:.2f}" for k in ("R@1", "top1")
        ), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
