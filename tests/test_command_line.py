"""Every key is known, every value typed: the command line and the config, refused in one line.

In-process: :func:`command_line_problem` on the overrides Hydra would refuse in many lines or
accept and ignore (unknown keys with or without ``+``, unknown group options, a sweep without
``--multirun``, a run folder that is a file), and the typed values of ``check_config`` (a value
that cannot be read names its key). One subprocess checks the wiring: exit status 2, one line,
nothing created.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedvssl.guard.command_line import command_line_problem
from fedvssl.settings import check_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("config", "argv", "message"),
    [
        ("finetune", ["epoch=3"], "unknown key 'epoch' in 'epoch=3': did you mean epochs?"),
        ("finetune", ["+epoch=3"], "unknown key 'epoch' in '+epoch=3': did you mean epochs?"),
        ("base", ["++lr=0.1"], "unknown key 'lr' in '++lr=0.1': did you mean optimizer.lr?"),
        ("base", ["+finetune.epoch=1"], "did you mean finetune.epochs?"),
        ("base", ["finetune.epochs=1"], "write '+finetune.epochs=1'"),
        ("base", ["+rounds=3"], "rounds is already a key: write 'rounds=3' without '+'"),
        ("base", ["ray_init_args.num_cpus=2"], "write '+ray_init_args.num_cpus=2'"),
        ("base", ["+ray_init_args.address=auto"], "write 'ray_init_args.address=auto' without"),
        ("report", ["grid.alphas=[1]"], "did you mean grid.alpha?"),
        ("base", ["dataset=ucf102"], "unknown dataset 'ucf102' in 'dataset=ucf102'; the options"),
        ("base", ["strategy.alpha=0,1"], "'strategy.alpha=0,1' is a sweep: add --multirun"),
        ("base", ["rounds=[1,"], "cannot read the command line (no viable alternative"),
        ("base", ["hydra.run.dir=/dev/null"], "hydra.run.dir=/dev/null is not a folder: choose"),
        ("base", ["hydra.run.dir=/dev/null/run"], "lies under /dev/null, not a folder"),
    ],
)
def test_the_command_line_is_refused_in_one_line(
    config: str, argv: list[str], message: str
) -> None:
    problem = command_line_problem(config, argv)
    assert problem is not None and message in str(problem) and "\n" not in str(problem)


@pytest.mark.parametrize(
    ("config", "argv"),
    [
        ("base", ["+finetune.epochs=1", "+ray_init_args.num_cpus=2", "pre_train=false"]),
        ("base", ["-m", "pretext=vcop,speed", "strategy.alpha=0,0.9", "experiment=smoke"]),
        ("finetune", ["epochs=2", "optimizer.milestones=[1]", "dataset=ucf101"]),
        ("base", ["--cfg", "job", "no_such_key=1"]),  # Hydra's own modes are left to Hydra
    ],
)
def test_known_keys_pass(config: str, argv: list[str]) -> None:
    assert command_line_problem(config, argv) is None


@pytest.fixture(scope="module")
def base_config() -> dict[str, Any]:
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    with initialize(config_path="../conf", version_base="1.3"):
        cfg = compose(config_name="base", overrides=["experiment=smoke"])
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return plain


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("rounds", "abc", "rounds must be an integer, got 'abc'"),
        ("resume", "yes", "resume must be true or false, got 'yes'"),
        ("batch_size", 0, "batch_size must be at least 1, got 0"),
        ("workers", -1, "workers must be at least 0, got -1"),
        ("seed", -1, "seed must be at least 0, got -1"),
        ("clip_len", 0, "clip_len must be at least 8, got 0"),
        ("round_timeout", 0, "round_timeout must be above 0, got 0"),
        ("optimizer.lr", float("nan"), "optimizer.lr must be a finite number, got nan"),
        ("evaluation.ks", [1, "five"], "evaluation.ks must be a list of integers"),
        ("data_dir", "/dev/null", "data_dir=/dev/null is a file: point data_dir at a folder"),
    ],
)
def test_config_values_are_typed_and_name_their_key(
    base_config: dict[str, Any], key: str, value: Any, message: str
) -> None:
    import copy

    cfg = copy.deepcopy(base_config)
    *sections, last = key.split(".")
    node = cfg
    for section in sections:
        node = node[section]
    node[last] = value
    with pytest.raises(ValueError) as refused:
        check_config(cfg)
    assert str(refused.value) == message or str(refused.value).startswith(message)


def test_the_entry_points_refuse_before_hydra_writes_anything(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "fedvssl.main", f"hydra.run.dir={run_dir}", "+finetune.epoch=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and "did you mean finetune.epochs?" in errors[0], done.stdout
    assert not run_dir.exists()
