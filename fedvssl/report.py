"""``python -m fedvssl.report``: the paper's alpha x beta table in one command (Hydra).

Sweep mode (the default) pre-trains every (alpha, beta) of ``grid`` for each seed, plus plain
FedAvg, then evaluates every final global model, and a random backbone, on each ``downstream``
dataset (retrieval, then fine-tuning and the 10-clip test). Checkpoint mode
(``checkpoints=[a.npz,published:all,...]``) evaluates given files instead. The table
(:mod:`fedvssl.report_table`) goes to ``report.md``, ``report.json`` and ``report.png`` in
``work_dir``.

Every cell is one ``fedvssl.main`` or ``fedvssl.finetune`` run in its own folder under
``work_dir/cells/``, named by its settings and a hash of its command line, and marked done by a
``cell.json`` holding what the table needs. A second call finds the finished cells and computes
nothing again; a killed call continues its unfinished cell (``resume=true``). A failed cell is
recorded, shown in the table, and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedvssl.aggregation import check_alpha, check_beta
from fedvssl.data.atomic import write_bytes_atomic
from fedvssl.guard import config_values as values
from fedvssl.guard.command_line import CommandLineError, check_command_line, check_overrides
from fedvssl.guard.run_folder import RunFolder, hydra_record
from fedvssl.published import MANIFEST, PREFIX, Published, lookup
from fedvssl.report_table import Row, write_report

logger = logging.getLogger(__name__)

CONF = Path(__file__).resolve().parents[1] / "conf"
FIRST_SEED = 7  # the package's default seed; seeds=N runs 7, 8, ...
RESULT_KEYS = ("R@1", "R@5", "top1", "top5")


class ReportError(ValueError):
    """The report's settings cannot work; raised before any cell runs."""


@dataclass
class Setting:
    """One row of the table: how its checkpoints come about, per seed."""

    label: str
    pretrain: list[str] | None  # fedvssl.main overrides; None: nothing to pre-train
    checkpoint: str | None = None  # checkpoint mode: the file; None with pretrain None: random
    published: Published | None = None  # the published checkpoint, or the paper's same setting
    alpha: float | None = None
    beta: float | None = None
    seeds: list[int] = field(default_factory=list)
    pretext: str | None = None  # the pre-training's pretext (None: not pre-trained here)


def cell_dir(work: Path, kind: str, label: str, args: list[str]) -> Path:
    """Where the cell of ``args`` lives: its kind and label, and a hash of the command."""
    digest = hashlib.sha256("\0".join(args).encode()).hexdigest()[:10]
    slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in label)
    return work / "cells" / f"{kind}-{slug}-{digest}"


def run_cell(
    module: str, args: list[str], where: Path, summarise: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``python -m module args`` unless ``where/cell.json`` exists; return its summary.

    ``summarise(where)`` reads the finished run into the summary kept in ``cell.json``. A failed
    run is returned as ``{"error": ...}`` (and not marked done, so a later call tries again).
    """
    done = where / "cell.json"
    if done.is_file():
        return dict(json.loads(done.read_text())) | {"computed": False}
    logger.info("cell %s: python -m %s %s", where.name, module, " ".join(args))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", module, *args, f"hydra.run.dir={where}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        errors = [line for line in proc.stdout.splitlines() if "error:" in line]
        reason = errors[-1] if errors else (proc.stderr.strip().splitlines() or ["?"])[-1]
        logger.error("cell %s failed: %s", where.name, reason)
        return {"error": reason.split("error:", 1)[-1].strip(), "computed": True}
    summary = summarise(where) | {"seconds": time.perf_counter() - started}
    write_bytes_atomic(json.dumps(summary).encode(), done)
    return summary | {"computed": True}


def pretrain_summary(where: Path) -> dict[str, Any]:
    """Read the last round's checkpoint and its loss over the trivial loss."""
    last = json.loads((where / "metrics.json").read_text())["rounds"][-1]
    trivial = last.get("trivial_loss")
    return {
        "checkpoint": str(where / "fedvssl_results" / f"round-{last['round']}-weights.array.npz"),
        "ratio": last["train_loss"] / trivial if trivial else None,
    }


def eval_summary(where: Path) -> dict[str, Any]:
    """Read the headline metrics of ``results.json``."""
    results = json.loads((where / "results.json").read_text())
    return {key: results[key] for key in RESULT_KEYS if key in results}


def check_report_config(cfg: dict[str, Any]) -> None:
    """Check every key's type and range, and the cells' overrides, before any cell runs."""
    for key in ("grid.alpha", "grid.beta"):
        values.numbers(cfg, key)
    for alpha in cfg["grid"]["alpha"]:
        check_alpha(alpha, "grid.alpha", ReportError)
    for beta in cfg["grid"]["beta"]:
        check_beta(beta, "grid.beta", ReportError)
    for key in ("fedavg", "random"):
        values.flag(cfg, key)
    for key in ("downstream", "pretexts", "checkpoints", "pretrain", "finetune"):
        values.strings(cfg, key)
    for key, config_name in (("pretrain", "base"), ("finetune", "finetune")):
        try:
            check_overrides(config_name, list(cfg[key]), multirun=False)
        except CommandLineError as err:
            raise ReportError(f"{key}: {err}") from None


def settings(cfg: dict[str, Any]) -> list[Setting]:
    """Return the table's rows, checked: one clear error before any work starts."""
    seeds = list(range(FIRST_SEED, FIRST_SEED + values.integer(cfg, "seeds", 1)))
    check_report_config(cfg)
    known = {p.stem for p in (CONF / "dataset").glob("*.yaml")}
    for name in [cfg["dataset"], *cfg["downstream"]]:
        if name not in known:
            raise ReportError(f"unknown dataset {name!r}; the datasets are {sorted(known)}")
    if not cfg["downstream"]:
        raise ReportError("downstream is empty: name at least one dataset, e.g. [synthetic]")
    pretexts = {p.stem for p in (CONF / "pretext").glob("*.yaml")}
    for name in cfg.get("pretexts", ["ctp"]):
        if name not in pretexts:
            raise ReportError(f"unknown pretext {name!r}; the pretexts are {sorted(pretexts)}")
    rows = checkpoint_settings(cfg["checkpoints"]) if cfg["checkpoints"] else sweep_settings(cfg)
    if cfg["random"]:
        rows.append(Setting("random init", None))
    for row in rows:
        row.seeds = [FIRST_SEED] if row.checkpoint else seeds
    return rows


def sweep_settings(cfg: dict[str, Any]) -> list[Setting]:
    """Return, per pretext, one row per (alpha, beta) of the grid, then plain FedAvg."""
    grid = [(float(a), float(b)) for a in cfg["grid"]["alpha"] for b in cfg["grid"]["beta"]]
    if not grid and not cfg["fedavg"]:
        raise ReportError("the grid is empty and fedavg=false: there is nothing to pre-train")
    pretexts = [str(p) for p in cfg.get("pretexts", ["ctp"])]
    # the paper's row of the same setting: the published checkpoints are all CtP's
    reported = {("ctp", e.alpha, e.beta): e for e in MANIFEST}
    rows = []
    for pretext in pretexts:
        prefix = f"{pretext} " if pretexts != ["ctp"] else ""
        rows += [
            Setting(f"{prefix}alpha={a:g} beta={b:g}",
                    [f"pretext={pretext}", f"strategy.alpha={a}", f"strategy.beta={b}"],
                    published=reported.get((pretext, a, b)), alpha=a, beta=b, pretext=pretext)
            for a, b in grid
        ]  # fmt: skip
        if cfg["fedavg"]:
            rows.append(
                Setting(
                    f"{prefix}FedAvg", [f"pretext={pretext}", "strategy=fedavg"], pretext=pretext
                )
            )
    return rows


def checkpoint_settings(specs: list[str]) -> list[Setting]:
    """Return one row per checkpoint; ``published:all`` stands for the six published files."""
    rows = []
    for spec in specs:
        spec = str(spec)
        entries = MANIFEST if spec == f"{PREFIX}all" else None
        if entries is None and spec.startswith(PREFIX):
            entries = (lookup(spec.removeprefix(PREFIX)),)
        if entries is not None:
            rows += [
                Setting(e.name, None, f"{PREFIX}{e.name}", e, e.alpha, e.beta) for e in entries
            ]
        elif not Path(spec).is_file():
            raise ReportError(f"checkpoint {spec} does not exist; check the path")
        else:
            rows.append(Setting(Path(spec).stem, None, str(Path(spec).resolve())))
    return rows


def evaluate(cfg: dict[str, Any], row: Setting, seed: int, checkpoint: str | None) -> dict:
    """Evaluate one checkpoint (None: a random backbone) on every downstream dataset."""
    out = {}
    for dataset in cfg["downstream"]:
        args = [
            f"pretrained={checkpoint or 'null'}", f"dataset={dataset}",
            f"data_dir={cfg['data_dir']}", f"seed={seed}", "resume=true", *cfg["finetune"],
        ]  # fmt: skip
        where = cell_dir(Path(cfg["work_dir"]), "eval", f"{row.label}-{dataset}-{seed}", args)
        out[dataset] = run_cell("fedvssl.finetune", args, where, eval_summary)
    return out


def run_row(cfg: dict[str, Any], row: Setting) -> Row:
    """Pre-train (when the row needs it) and evaluate, for every seed of the row."""
    per_seed = []
    for seed in row.seeds:
        entry: dict[str, Any] = {"seed": seed}
        checkpoint = row.checkpoint
        if row.pretrain is not None:
            args = [f"dataset={cfg['dataset']}", f"data_dir={cfg['data_dir']}", f"seed={seed}",
                    "resume=true", *row.pretrain, *cfg["pretrain"]]  # fmt: skip
            where = cell_dir(Path(cfg["work_dir"]), "pretrain", f"{row.label}-{seed}", args)
            entry["pretraining"] = run_cell("fedvssl.main", args, where, pretrain_summary)
            checkpoint = entry["pretraining"].get("checkpoint")
            if checkpoint is None:  # the pre-training failed: nothing to evaluate
                per_seed.append(entry)
                continue
        entry["evaluation"] = evaluate(cfg, row, seed, checkpoint)
        per_seed.append(entry)
    return Row(row.label, row.alpha, row.beta, row.published, per_seed, row.pretext)


def report(cfg: dict[str, Any], accept: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run every cell that is not done yet and write the report; return ``report.json``'s data.

    ``accept()`` is called once the settings are checked
    (:class:`fedvssl.guard.run_folder.RunFolder`).
    """
    rows = settings(cfg)
    if accept is not None:
        accept()
    work = Path(cfg["work_dir"])
    logger.info("report: %d rows, downstream %s, in %s", len(rows), cfg["downstream"], work)
    done = [run_row(cfg, row) for row in rows]
    data = write_report(done, list(cfg["downstream"]), work)
    for line in (work / "report.md").read_text().splitlines():
        logger.info("%s", line)
    logger.info("report: %s, %s, %s", *(work / f"report.{x}" for x in ("md", "json", "png")))
    return data


@hydra.main(config_path="../conf", config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the Hydra entry point."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain = {str(k): v for k, v in plain.items()} | {"work_dir": HydraConfig.get().run.dir}
    try:
        with RunFolder(plain["work_dir"]) as folder:  # one report at a time in work_dir
            record = hydra_record(cfg)
            report(plain, lambda: folder.accept(record))
    except (ReportError, ValueError) as err:
        logger.error("error: %s", err)
        sys.exit(2)


if __name__ == "__main__":
    check_command_line("report")
    main()
