"""Probe every entry point with bad input: does each case get what the package promises.

    python -m benchmarks.probe_inputs [--output FILE] [--only TEXT] [--scratch DIR]

Each probe runs one command as a user would (a subprocess from the repository root, on a tiny
synthetic dataset: width-16 models, 8-frame 32-pixel clips, 2 clients) and classifies what came
back:

=========== ==================================================================================
refused     exit status 2 and one ``error:`` line, no traceback (bad input, refused up front)
failed      exit status 1 and one ``error:`` line, no traceback (the run started, then failed)
handled     exit status 0 (an input the package deals with itself, e.g. a killed run's lock)
traceback   a Python traceback
unclear     any other exit: no ``error:`` line, or several
hung        no exit within the probe's timeout
=========== ==================================================================================

A probe *passes* when its outcome is the promised one, its line names what it must (a key, a
file, a record), and, where it runs in an existing run folder, that folder's record
(``.hydra/``, the log, ``metrics.json`` or ``results.json``) is byte for byte as it was. The
report (``--output``, JSON) lists every probe with its command, outcome and line, and the counts;
docs/run_guarantees.md shows them, beside the promises. The set-up (a prepared dataset, a finished
2-round run, a retrieval-only fine-tuning) takes about a minute; the probes a few more on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import write_report

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "client_resources.num_cpus=1", "log_interval=2"]
FINETUNE = ["clip_len=8", "crop_size=32", "num_clips=2", "batch_size=4", "progress=false"]
PREP = "dataset_preparation.py"
RECORD = (".hydra", "main.log", "finetune.log", "report.log", "metrics.json", "results.json")


@dataclass
class Probe:
    """One bad input: the command, the promised outcome and what its line must name."""

    name: str
    entry: str  # the module or script
    args: list[str]
    expect: str  # refused, failed or handled
    names: list[str]  # each must be in the error line (for refused and failed)
    record: Path | None = None  # a run folder whose record must stay as it was
    setup: Callable[[], None] | None = None
    timeout: float = 120.0


@dataclass
class Scratch:
    """The probes' inputs, made once in ``root``."""

    root: Path
    data: Path = field(init=False)
    run: Path = field(init=False)
    finetuned: Path = field(init=False)
    checkpoint: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.root / "data"
        self.run = self.root / "run"
        self.finetuned = self.root / "finetuned"
        self.checkpoint = self.run / "fedvssl_results" / "round-2-weights.array.npz"

    def path(self, name: str) -> Path:
        """Return the folder of one probe."""
        return self.root / "probes" / name

    def copy_of(self, source: Path, name: str) -> Path:
        """Copy ``source`` (a run folder) to the folder of the probe ``name``."""
        target = self.path(name)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return target


def run(args: list[str], timeout: float) -> tuple[int | None, str, float]:
    """Run ``python args`` from the repository root; return (status or None, output, seconds)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as stopped:
        out = (stopped.stdout or b"").decode() if isinstance(stopped.stdout, bytes) else ""
        return None, out, time.perf_counter() - started
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - started


def prepare(scratch: Scratch) -> None:
    """Make the dataset, a finished 2-round run and a retrieval-only fine-tuning (once)."""
    if not (scratch.data / "synthetic" / "annotations").is_dir():
        from fedvssl.data.preparation import prepare_dataset

        prepare_dataset("synthetic", scratch.data, num_clients=2, synthetic_scale=0.2, workers=1)
    if not scratch.checkpoint.is_file():
        status, out, _ = run(
            ["-m", "fedvssl.main", f"hydra.run.dir={scratch.run}", f"data_dir={scratch.data}",
             *SMOKE], 600,
        )  # fmt: skip
        if status != 0:
            raise SystemExit(f"the set-up run failed:\n{out}")
    if not (scratch.finetuned / "results.json").is_file():
        status, out, _ = run(
            ["-m", "fedvssl.finetune", f"hydra.run.dir={scratch.finetuned}",
             f"data_dir={scratch.data}", f"pretrained={scratch.checkpoint}", "epochs=0",
             *FINETUNE], 600,
        )  # fmt: skip
        if status != 0:
            raise SystemExit(f"the set-up fine-tuning failed:\n{out}")


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a run folder's record."""
    files = [p for name in RECORD for p in [folder / name] if p.exists()]
    files = [f for p in files for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def outcome(status: int | None, out: str) -> tuple[str, str]:
    """Classify a command's end; return the outcome and its ``error:`` line (if one)."""
    errors = [line for line in out.splitlines() if "error:" in line]
    line = errors[0].strip() if errors else ""
    if status is None:
        return "hung", line
    if "Traceback (most recent call last)" in out:
        return "traceback", line
    if status == 0:
        return "handled", line
    if len(errors) == 1 and status in (1, 2):
        return ("refused" if status == 2 else "failed"), line
    return "unclear", line


def probe_one(probe: Probe) -> dict[str, Any]:
    """Run one probe; return its row of the report."""
    if probe.setup is not None:
        probe.setup()
    before = digests(probe.record) if probe.record is not None else None
    script = probe.entry.endswith(".py")
    command = [probe.entry] if script else ["-m", probe.entry]
    status, out, seconds = run([*command, *probe.args], probe.timeout)
    release_holders()
    kind, line = outcome(status, out)
    kept = before is None or probe.record is None or digests(probe.record) == before
    named = kind not in ("refused", "failed") or all(n in line for n in probe.names)
    return {
        "name": probe.name, "entry": probe.entry, "args": probe.args, "expected": probe.expect,
        "outcome": kind, "status": status, "line": line.split("error: ", 1)[-1], "named": named,
        "record_kept": kept if probe.record is not None else None,
        "passed": kind == probe.expect and named and kept, "seconds": round(seconds, 1),
        "tail": "" if kind == probe.expect else out[-600:],
    }  # fmt: skip


def main_probes(s: Scratch) -> list[Probe]:
    """Bad input to ``python -m fedvssl.main``: values, keys, groups, folders, data, state."""

    def main(name: str, *args: str) -> list[str]:
        return [f"hydra.run.dir={s.path(name)}", f"data_dir={s.data}", *SMOKE, *args]

    values = [
        ("rounds=abc", "rounds must be an integer, got 'abc'"),
        ("rounds=0", "rounds must be at least 1"),
        ("batch_size=0", "batch_size must be at least 1"),
        ("workers=-1", "workers must be at least 0"),
        ("round_timeout=0", "round_timeout must be above 0"),
        ("seed=-1", "seed must be at least 0"),
        ("clip_len=0", "clip_len must be at least 8"),
        ("crop_size=12", "multiples of 8"),
        ("resume=yes", "resume must be true or false"),
        ("optimizer.lr=-1", "optimizer.lr must be above 0"),
        ("optimizer.lr=nan", "optimizer.lr must be a finite number"),
        ("optimizer.momentum=abc", "optimizer.momentum must be a finite number"),
        ("client_resources.num_cpus=0", "client_resources.num_cpus must be above 0"),
        ("min_fit_clients=3", "min_fit_clients must be in [1, clients_per_round=2]"),
        ("clients_per_round=0", "clients_per_round must be in [1, pool_size=2]"),
        ("strategy.alpha=1.5", "strategy.alpha must be in [0, 1]"),
        ("strategy.beta=-1", "strategy.beta must be a finite number >= 0"),
        ("strategy.mix_coeff=abc", "strategy.mix_coeff must be in [0, 1]"),
        ("augment=gpu", "augment must be one of"),
        ("evaluate_every=-1", "evaluate_every must be at least 0"),
        ("evaluation.max_videos=0", "evaluation.max_videos must be at least 1"),
        ("model.width=0", "model.width must be at least 1"),
        ("local_epochs=0", "local_epochs must be at least 1"),
        ("log_interval=0", "log_interval must be at least 1"),
        ("stop_after_failed_rounds=0", "stop_after_failed_rounds must be at least 1"),
        ("progress=maybe", "progress must be true or false"),
    ]
    probes = [
        Probe(f"main {arg}", "fedvssl.main", main(f"v{i}", arg), "refused", [name])
        for i, (arg, name) in enumerate(values)
    ]
    a_file = s.root / "a_file"
    keys = [
        (["epoch=3"], ["unknown key 'epoch'"]),
        (["+epoch=3"], ["unknown key 'epoch'"]),
        (["lr=0.1"], ["did you mean optimizer.lr?"]),
        (["++optimizer.lrr=0.1"], ["did you mean optimizer.lr?"]),
        (["+finetune.epoch=1", "pre_train=false"], ["did you mean finetune.epochs?"]),
        (["+rounds=3"], ["rounds is already a key"]),
        (["pretext=jigsaw"], ["unknown pretext 'jigsaw'", "ctp, speed, vcop"]),
        (["dataset=ucf102"], ["unknown dataset 'ucf102'"]),
        (["+experiment=smoke"], ["without '+'"]),
        (["strategy.alpha=0,1"], ["is a sweep: add --multirun"]),
        (["rounds=[1,"], ["cannot read the command line"]),
        (["augment=device", "pretext=vcop"], ["augment=device supports the ctp pretext only"]),
        ([f"data_dir={a_file}"], [f"data_dir={a_file} is a file"]),
        (["data_dir=/sys/fedvssl-data"], ["cannot prepare the synthetic dataset"]),
        (
            ["dataset=ucf101", f"data_dir={s.root / 'empty'}"],
            ["dataset_preparation.py --dataset ucf101"],
        ),
        (["ray_init_args.address=127.0.0.1:9"], ["cannot join the Ray cluster"]),
        (
            ["+ray_init_args.num_cpuss=2"],
            ["not an argument of ray.init", "ray_init_args.num_cpus?"],
        ),
    ]
    probes += [
        Probe(f"main {' '.join(args)}", "fedvssl.main", main(f"k{i}", *args), "refused", names)
        for i, (args, names) in enumerate(keys)
    ]
    probes += [
        Probe("main hydra.run.dir=<a file>", "fedvssl.main",
              [f"hydra.run.dir={a_file}", *SMOKE], "refused", ["is not a folder"]),
        Probe("main hydra.run.dir=<a file>/run", "fedvssl.main",
              [f"hydra.run.dir={a_file}/run", *SMOKE], "refused", ["not a folder"]),
        Probe("main hydra.run.dir=<read-only>", "fedvssl.main",
              ["hydra.run.dir=/sys/fedvssl-run", *SMOKE], "refused", ["cannot be written"]),
        Probe("main -m hydra.sweep.dir=<a file>", "fedvssl.main",
              ["-m", f"hydra.sweep.dir={a_file}", *SMOKE, "seed=1,2"], "refused",
              ["hydra.sweep.dir=", "is not a folder"]),
    ]  # fmt: skip
    return probes + state_probes(s, main) + data_probes(s, main)


def state_probes(s: Scratch, main: Callable[..., list[str]]) -> list[Probe]:
    """Return the probes of a run folder that does not fit: checkpoints, settings, a lock."""
    probes = []

    def copied(name: str, damage: Callable[[Path], None] | None = None) -> Callable[[], None]:
        def setup() -> None:
            folder = s.copy_of(s.run, name)
            if damage is not None:
                damage(folder)

        return setup

    def truncate(folder: Path) -> None:
        last = folder / "fedvssl_results" / "round-2-weights.array.npz"
        last.write_bytes(last.read_bytes()[:1000])

    def nan(folder: Path) -> None:
        from fedvssl.checkpoints import load_global_checkpoint, save_global_checkpoint

        last = folder / "fedvssl_results" / "round-2-weights.array.npz"
        state = load_global_checkpoint(last)
        state["head.fc1.bias"][0] = np.nan
        save_global_checkpoint(last, state)

    def break_metrics(folder: Path) -> None:
        (folder / "metrics.json").write_text('{"rounds": [')

    def stale_lock(folder: Path) -> None:
        dead = {"pid": 999999, "host": "elsewhere", "started": "earlier", "command": "killed"}
        (folder / ".fedvssl.lock").write_text(json.dumps(dead))

    cases = [
        ("rounds there, no resume", None, ["rounds=3"], "refused",
         ["already holds round checkpoints"]),
        ("resume, other settings", None,
         ["resume=true", "rounds=3", "strategy.alpha=0.0", "seed=99", "optimizer.lr=0.5"],
         "refused",
         ["optimizer.lr (0.01 -> 0.5)", "seed (7 -> 99)", "strategy.alpha (0.9 -> 0.0)"]),
        ("resume, other pretext", None, ["resume=true", "pretext=vcop"], "refused",
         ['pretext.name ("ctp" -> "vcop")']),
        ("resume, truncated last checkpoint", truncate, ["resume=true"], "refused",
         ["not a readable round checkpoint", "To resume from round 1, move round-2"]),
        ("resume, NaN in the last checkpoint", nan, ["resume=true"], "refused",
         ["head.fc1.bias holds non-finite values"]),
        ("resume, broken metrics.json", break_metrics, ["resume=true", "rounds=3"], "refused",
         ["metrics.json cannot be read"]),
        ("resume, a killed run's lock", stale_lock, ["resume=true", "rounds=3"], "handled", []),
    ]  # fmt: skip
    for i, (label, damage, args, expect, names) in enumerate(cases):
        name = f"s{i}"
        record = s.path(name) if expect == "refused" and damage is None else None
        probes.append(
            Probe(f"main <finished run> {label}", "fedvssl.main", main(name, *args), expect,
                  names, record=record, setup=copied(name, damage), timeout=300)
        )  # fmt: skip
    lock_setup = copied("s-locked")

    def locked_run() -> None:
        lock_setup()
        hold(s, s.path("s-locked"))

    probes += [
        Probe("main <a run folder in use>", "fedvssl.main", main("s-locked", "resume=true"),
              "refused", ["is in use by another run (process"], record=s.path("s-locked"),
              setup=locked_run),
        Probe("main <finished run> resume=true +epoch=3", "fedvssl.main",
              main("s-plus", "resume=true", "+epoch=3"), "refused", ["unknown key 'epoch'"],
              record=s.path("s-plus"), setup=copied("s-plus")),
        Probe("main -m pretext=vcop,jigsaw", "fedvssl.main",
              ["-m", f"hydra.sweep.dir={s.path('sweep')}", f"data_dir={s.data}", *SMOKE,
               "pretext=vcop,jigsaw"], "refused", ["unknown pretext 'jigsaw'"]),
    ]  # fmt: skip
    probes.append(
        Probe("main optimizer.lr=1e12 (every reply non-finite)", "fedvssl.main",
              main("diverged", "optimizer.lr=1e12"), "failed",
              ["round 1 aggregated nothing", "first client error", "must be a finite number"],
              timeout=300)
    )  # fmt: skip
    return probes


HOLDERS: list[subprocess.Popen[str]] = []
HOLDER = """import sys, time
from pathlib import Path
from fedvssl.guard.run_folder import acquire_lock
acquire_lock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def release_holders() -> None:
    """End the processes that hold a lock for a probe."""
    while HOLDERS:
        holder = HOLDERS.pop()
        holder.kill()
        holder.wait()


def hold(s: Scratch, folder: Path) -> None:
    """Start a process that holds ``folder``'s lock (as a running run would) until the end."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    HOLDERS.append(process)


def data_probes(s: Scratch, main: Callable[..., list[str]]) -> list[Probe]:
    """Return the probes of a prepared dataset with one defect, as ``dataset=ucf101``."""

    def damaged(name: str, damage: Callable[[Path], None]) -> Callable[[], None]:
        def setup() -> None:
            root = s.root / "datasets" / name / "ucf101"
            shutil.rmtree(root.parent, ignore_errors=True)
            shutil.copytree(s.data / "synthetic" / "annotations", root / "annotations")
            (root / "zips").symlink_to(s.data / "synthetic" / "zips")
            damage(root)

        return setup

    def edit(
        relative: str, change: Callable[[list[dict[str, Any]]], Any]
    ) -> Callable[[Path], None]:
        def damage(root: Path) -> None:
            path = root / "annotations" / relative
            records = json.loads(path.read_text())
            path.write_text(json.dumps(change(records)))

        return damage

    def relabel(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        records[0]["label"] = 999
        return records

    def twice(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*records, {"name": records[0]["name"], "label": records[0]["label"] % 10 + 1}]

    def malformed(root: Path) -> None:
        (root / "annotations" / "client_distribution" / "client_dist2.json").write_text("[{")

    def unzipped(root: Path) -> None:
        (root / "zips").unlink()
        (root / "zips").mkdir()

    def empty_partition(root: Path) -> None:
        (root / "annotations" / "client_distribution" / "client_dist2.json").write_text("[]")

    def test_video_in_partition(root: Path) -> None:
        test = json.loads((root / "annotations" / "test_split_1.json").read_text())
        path = root / "annotations" / "client_distribution" / "client_dist1.json"
        path.write_text(json.dumps([*json.loads(path.read_text()), test[0]]))

    cases = [
        ("a train label of 999", edit("train_split_1.json", relabel),
         ["train_split_1.json: record 0", "label 999, not in [1, 101]"]),
        ("a video under two labels", edit("test_split_1.json", twice),
         ["test_split_1.json", "a video has one label"]),
        ("a malformed partition", malformed, ["client_dist2.json is not valid JSON"]),
        ("an empty partition", empty_partition, ["client_dist2.json", "lists no videos"]),
        ("videos without frames", unzipped, ["listed videos have no frames"]),
        ("a test video in a partition", test_video_in_partition,
         ["client_dist1.json: record", "is not a video of the train list"]),
    ]  # fmt: skip
    return [
        Probe(f"main <data: {label}>", "fedvssl.main",
              main(f"d{i}", "dataset=ucf101", f"data_dir={s.root / 'datasets' / f'd{i}'}"),
              "refused", names, setup=damaged(f"d{i}", damage))
        for i, (label, damage, names) in enumerate(cases)
    ]  # fmt: skip


def finetune_probes(s: Scratch) -> list[Probe]:
    """Bad input to ``python -m fedvssl.finetune``."""

    def ft(name: str, *args: str) -> list[str]:
        return [f"hydra.run.dir={s.path(name)}", f"data_dir={s.data}", *FINETUNE, *args]

    files = s.root / "checkpoints"

    def write_files() -> None:
        from fedvssl.checkpoints import load_global_checkpoint, save_global_checkpoint

        files.mkdir(exist_ok=True)
        state = load_global_checkpoint(s.checkpoint)
        state["backbone.layer1.0.conv1.conv.weight"][0] = np.inf
        save_global_checkpoint(files / "nan.npz", state)
        (files / "truncated.npz").write_bytes(s.checkpoint.read_bytes()[:5000])
        (files / "text.npz").write_text("hello")
        cache = files / "cache"
        cache.mkdir(exist_ok=True)
        shutil.copyfile(s.checkpoint, cache / "fedvssl-a0.9-b1.npz")  # saved by hand: width 16

    cases = [
        (["epoch=3"], ["unknown key 'epoch'", "did you mean epochs?"]),
        (["+epoch=3"], ["unknown key 'epoch'"]),
        (["pretrained=/no/such/model.npz"], ["no such checkpoint file"]),
        ([f"pretrained={files / 'text.npz'}"], ["text.npz", "neither an .npz checkpoint"]),
        ([f"pretrained={files / 'truncated.npz'}"], ["truncated.npz"]),
        ([f"pretrained={files / 'nan.npz'}"], ["layer1.0.conv1.conv.weight holds non-finite"]),
        (["pretrained=published:nope"], ["no published checkpoint is called 'nope'"]),
        (["pretrained=published:fedvssl-a0.9-b1", f"published_cache={files / 'cache'}"],
         ["width-16 backbone, expected 64", "moved to"]),
        (["frame_stride=0"], ["frame_stride must be at least 1"]),
        (["epochs=-1"], ["epochs must be 0 (retrieval only) or more"]),
        (["batch_size=abc"], ["batch_size must be an integer, got 'abc'"]),
        (["optimizer.milestones=60"], ["optimizer.milestones must be a list of integers"]),
        (["recall_ks=[0]"], ["every entry of recall_ks must be at least 1"]),
        (["model.dropout=abc"], ["model.dropout must be a finite number"]),
        (["resume=maybe"], ["resume must be true or false"]),
        ([f"hydra.run.dir={s.root / 'a_file'}"], ["is not a folder"]),
        ([f"data_dir={s.root / 'a_file'}"], ["cannot prepare the synthetic dataset"]),
    ]  # fmt: skip
    probes = [
        Probe(f"finetune {' '.join(a.replace(str(s.root), '<scratch>') for a in args)}",
              "fedvssl.finetune", ft(f"f{i}", *args), "refused", names,
              setup=write_files if i == 0 else None)
        for i, (args, names) in enumerate(cases)
    ]  # fmt: skip
    shared = [f"hydra.run.dir={s.finetuned}", f"data_dir={s.data}", *FINETUNE, "resume=true",
              "epochs=0"]  # fmt: skip
    probes += [
        Probe("finetune <finished> resume, other lr", "fedvssl.finetune",
              [*shared, f"pretrained={s.checkpoint}", "optimizer.lr=0.5"], "refused",
              ["optimizer.lr (0.01 -> 0.5)"], record=s.finetuned),
        Probe("finetune <finished> resume, other crop_size", "fedvssl.finetune",
              [*shared, f"pretrained={s.checkpoint}", "crop_size=64"], "refused",
              ["crop_size (32 -> 64)"], record=s.finetuned),
        Probe("finetune <a run folder in use>", "fedvssl.finetune",
              [*shared, f"pretrained={s.checkpoint}"], "refused", ["is in use by another run"],
              record=s.finetuned, setup=lambda: hold(s, s.finetuned)),
        Probe("finetune <finished> resume, another pretrained file", "fedvssl.finetune",
              [*shared, f"pretrained={s.run / 'fedvssl_results' / 'round-1-weights.array.npz'}"],
              "refused", ["pretrained_sha256"], record=s.finetuned),
    ]  # fmt: skip
    return probes


def report_probes(s: Scratch) -> list[Probe]:
    """Bad input to ``python -m fedvssl.report``: refused before any cell runs."""
    cases = [
        ("grid.alpha=0.5", ["grid.alpha must be a list of numbers"]),
        ("grid.alpha=[banana]", ["grid.alpha must be a list of numbers"]),
        ("grid.alpha=[1.5]", ["grid.alpha must be in [0, 1]"]),
        ("grid.beta=[-1]", ["grid.beta must be a finite number >= 0"]),
        ("seeds=abc", ["seeds must be an integer"]),
        ("seeds=0", ["seeds must be at least 1"]),
        ("fedavg=maybe", ["fedavg must be true or false"]),
        ("downstream=[nosuchset]", ["unknown dataset 'nosuchset'"]),
        ('pretrain=["epoch=3"]', ["pretrain: unknown key 'epoch'"]),
        ('finetune=["epoch=3"]', ["finetune: unknown key 'epoch'", "did you mean epochs?"]),
        ("pretrain=[epoch=3]", ["cannot read the command line"]),
        ("grid.alphas=[1]", ["did you mean grid.alpha?"]),
        (f"work_dir={s.root / 'a_file'}", ["is not a folder"]),
    ]
    in_use = s.path("r-locked")
    return [
        Probe("report <work_dir in use>", "fedvssl.report", [f"work_dir={in_use}"], "refused",
              ["is in use by another run"], setup=lambda: hold(s, in_use)),
    ] + [
        Probe(f"report {arg.replace(str(s.root), '<scratch>')}", "fedvssl.report",
              [f"work_dir={s.path(f'r{i}')}", f"data_dir={s.data}", arg] if "work_dir" not in arg
              else [f"data_dir={s.data}", arg], "refused", names)
        for i, (arg, names) in enumerate(cases)
    ]  # fmt: skip


def tool_probes(s: Scratch) -> list[Probe]:
    """Bad input to the data tools and ``python -m fedvssl.published``."""
    lists = s.root / "lists"

    def write_lists() -> None:
        lists.mkdir(exist_ok=True)
        (lists / "twice.txt").write_text("abseiling/v1 1\narchery/v2 2\nabseiling/v1 3\n")
        (lists / "bad.txt").write_text("abseiling/v1 1\nnot a line\n")
        (lists / "ok.txt").write_text("".join(f"c{i}/v{i} {i % 4 + 1}\n" for i in range(20)))

    k400 = "data_partitioning_k400.py"
    prep = PREP
    a_file = s.root / "a_file"
    return [
        *raw_video_probes(s),
        Probe("k400 a video under two labels", k400, ["--annotations", str(lists / "twice.txt"),
              "--output", str(s.path("k0"))], "refused", ["twice.txt:3", "a video has one label"],
              setup=write_lists),
        Probe("k400 a malformed line", k400, ["--annotations", str(lists / "bad.txt"),
              "--output", str(s.path("k1"))], "refused", ["bad.txt:2"]),
        Probe("k400 --output <a file>", k400, ["--annotations", str(lists / "ok.txt"), "--scheme",
              "iid", "--num-clients", "2", "--output", str(a_file)], "refused", ["is a file"]),
        Probe("k400 --annotations <missing>", k400, ["--annotations", "/no/such.txt", "--output",
              str(s.path("k3"))], "refused", ["/no/such.txt"]),
        Probe("k400 --annotations <a folder>", k400, ["--annotations", str(lists), "--output",
              str(s.path("k4"))], "refused", [str(lists)]),
        Probe("k400 noniid with 3 clients", k400, ["--annotations", str(lists / "ok.txt"),
              "--output", str(s.path("k5")), "--num-clients", "3"], "refused", ["must be even"]),
        Probe("k400 dirichlet --alpha -1", k400, ["--annotations", str(lists / "ok.txt"),
              "--output", str(s.path("k6")), "--scheme", "dirichlet", "--num-clients", "2",
              "--alpha", "-1"], "refused", ["--alpha must be positive"]),
        Probe("prep --num-clients 0", prep, ["--dataset", "synthetic", "--data-dir",
              str(s.path("p0")), "--num-clients", "0"], "refused", ["--num-clients"]),
        Probe("prep --dataset nope", prep, ["--dataset", "nope"], "refused", ["--dataset"]),
        Probe("prep --data-dir <a file>", prep, ["--dataset", "synthetic", "--data-dir",
              str(a_file), "--synthetic-scale", "0.05"], "refused", [str(a_file)]),
        Probe("prep --raw <missing>", prep, ["--dataset", "ucf101", "--data-dir", str(s.path("p3")),
              "--raw", "/no/such/UCF101.rar", "--splits", "/no/such/splits.zip"], "refused",
              ["/no/such/"]),
        Probe("published fetch nope", "fedvssl.published", ["fetch", "nope"], "refused",
              ["no published checkpoint is called 'nope'"]),
    ]  # fmt: skip


def raw_video_probes(s: Scratch) -> list[Probe]:
    """Bad K-400 downloads and folders of one's own videos (refused before any video is read)."""
    raw = s.root / "k400"
    header = "label,youtube_id,time_start,time_end,split"
    row = "hurling (sport),y01_Ab-cdEf,1,11,train"

    def write_raw() -> None:
        for folder in ("train", "val", "no_val", "other_header", "no_videos/annotations"):
            (raw / folder).mkdir(parents=True, exist_ok=True)
        (raw / "train" / "y01_Ab-cdEf_000001_000011.mp4").write_bytes(b"a video")
        for name in ("train.csv", "val.csv"):
            (raw / name).write_text(f"{header}\n{row}\n")
            (raw / "other_header" / name).write_text(f"{header.replace('youtube', 'video')}\n")
            (raw / "no_videos" / "annotations" / name).write_text(f"{header}\n{row}\n")
        (raw / "no_val" / "train.csv").write_text(f"{header}\n{row}\n")
        (raw / "partitions").mkdir(exist_ok=True)
        (raw / "partitions" / "client_dist1.json").write_text(
            '[{"name": "abseiling/x_000001_000011", "label": 290}]'
        )
        (raw / "cameras" / "cam1").mkdir(parents=True, exist_ok=True)
        (raw / "cameras" / "cam1" / "a.mp4").write_bytes(b"a video")

    def prep(name: str, *args: str) -> list[str]:
        return [*args, "--data-dir", str(s.path(name)), "--no-disk-check"]

    k400 = ["--dataset", "k400", "--raw", str(raw)]
    probes = [
        Probe("prep k400 with no val.csv", PREP, prep("v0", *k400, "--annotations",
              str(raw / "no_val")), "refused", ["has no val.csv or validate.csv"]),
        Probe("prep k400 a CSV with another header", PREP, prep("v1", *k400, "--annotations",
              str(raw / "other_header")), "refused", ["a Kinetics-400 CSV starts with"]),
        Probe("prep k400 --raw with no videos", PREP, prep("v2", "--dataset", "k400", "--raw",
              str(raw / "no_videos")), "refused", ["holds no .mp4/.webm/.mkv videos"]),
        Probe("prep k400 --partitions that match no video", PREP, prep("v3", *k400,
              "--annotations", str(raw), "--partitions", str(raw / "partitions")), "refused",
              ["no entry of the --partitions files"]),
        Probe("prep videos --partition-by folder with one folder", PREP, prep("v4", "--dataset",
              "videos", "--raw", str(raw / "cameras"), "--partition-by", "folder"), "refused",
              ["one top-level folder"]),
    ]  # fmt: skip
    for probe in probes:
        probe.setup = write_raw  # each can run alone (--only)
    return probes


def probes(s: Scratch) -> list[Probe]:
    """Every probe, in the order of the report."""
    return main_probes(s) + finetune_probes(s) + report_probes(s) + tool_probes(s)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Count the outcomes, overall and per entry point, and the probes that pass."""
    per_entry: dict[str, Counter[str]] = {}
    for row in rows:
        per_entry.setdefault(row["entry"], Counter())[row["outcome"]] += 1
    return {
        "probes": len(rows),
        "passed": sum(row["passed"] for row in rows),
        "outcomes": dict(Counter(row["outcome"] for row in rows)),
        "expected": dict(Counter(row["expected"] for row in rows)),
        "per_entry": {entry: dict(counts) for entry, counts in per_entry.items()},
        "failed_probes": [row["name"] for row in rows if not row["passed"]],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the probes; write the report; return 1 when a probe did not pass."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    parser.add_argument("--only", help="run the probes whose name contains this text")
    parser.add_argument("--scratch", type=Path, help="keep the inputs here (default: temporary)")
    args = parser.parse_args(argv)
    root = args.scratch or Path(tempfile.mkdtemp(prefix="fedvssl-probes-"))
    scratch = Scratch(root.absolute())
    (scratch.root / "a_file").parent.mkdir(parents=True, exist_ok=True)
    (scratch.root / "a_file").write_text("not a folder\n")
    started = time.perf_counter()
    prepare(scratch)
    rows = []
    try:
        for probe in probes(scratch):
            if args.only and args.only not in probe.name:
                continue
            rows.append(probe_one(probe))
            row = rows[-1]
            mark = "ok " if row["passed"] else "BAD"
            print(f"{mark} {row['outcome']:9} {row['seconds']:6.1f} s  {row['name']}", flush=True)
    finally:
        release_holders()
        if args.scratch is None:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(rows).replace(str(scratch.root), "<scratch>")
    rows = json.loads(text.replace(sys.executable, "python"))  # no machine's paths in the report
    only = f" --only {args.only!r}" if args.only else ""
    report = {
        "command": f"python -m benchmarks.probe_inputs{only}",
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary(rows),
        "probes": rows,
    }  # fmt: skip
    write_report(report, args.output)
    counts = report["summary"]
    print(f"{counts['passed']} of {counts['probes']} probes passed; outcomes {counts['outcomes']}")
    return 0 if counts["passed"] == counts["probes"] else 1


if __name__ == "__main__":
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    raise SystemExit(main())
