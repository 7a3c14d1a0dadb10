"""Downstream evaluation end to end: `python -m fedvssl.finetune` and the `pre_train=false` route.

Each run is a separate process, as a user runs it: a width-16 checkpoint, 8-frame 32 px clips,
2 clips per test video, on the tiny synthetic dataset. Checked: results.json, the checkpoints,
resuming an interrupted fine-tuning, the one-line errors, the config hand-over from pre-training
and the per-round evaluator of pre-training.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from CtP.ctp import build_ctp
from fedvssl.checkpoints import save_global_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["clip_len=8", "crop_size=32", "num_clips=2", "batch_size=4", "progress=false"]
RECALL_KEYS = ["R@1", "R@5", "R@10", "R@20", "R@50"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pre-training checkpoint in our round format."""
    torch.manual_seed(3)
    state = {k: v.numpy() for k, v in build_ctp(width=16, clip_len=8).state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "round-1-weights.array.npz"
    save_global_checkpoint(path, state)
    return path


def run(module: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def finetune(run_dir: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return run(
        "fedvssl.finetune", f"hydra.run.dir={run_dir}", f"data_dir={data_dir}", *TINY, *overrides
    )


def check_results(run_dir: Path, checkpoint: Path, epochs: int) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["checkpoint"] == str(checkpoint.resolve())
    assert results["dataset"] == "synthetic" and results["epochs"] == epochs
    recalls = [results[k] for k in RECALL_KEYS]
    assert all(0 <= r <= 100 for r in recalls) and recalls == sorted(recalls)
    assert recalls[-1] == 100.0  # 40 gallery videos: all of them are in the top 50
    for key in ("top1", "top5", "mean_class_accuracy"):
        assert 0 <= results[key] <= 100
    assert results["top1"] <= results["top5"]
    assert results["seconds"] > 0 and results["config"]["clip_len"] == 8
    return results


def test_finetune_end_to_end_and_resume(
    synthetic_data_dir: Path, checkpoint: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    done = finetune(run_dir, synthetic_data_dir, f"pretrained={checkpoint}", "epochs=1")
    assert done.returncode == 0, done.stdout + done.stderr
    first = check_results(run_dir, checkpoint, epochs=1)
    assert "R@1" in done.stdout and "top-1" in done.stdout  # the small table
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert set(last) >= {"model", "optimizer", "scheduler", "epoch"} and last["epoch"] == 1
    assert last["model"]["backbone.stem.conv.weight"].shape == (16, 3, 3, 7, 7)
    assert last["model"]["cls_head.fc_cls.weight"].shape == (10, 128)  # 10 synthetic classes

    # Without resume=true the finished fine-tuning is not overwritten.
    refused = finetune(run_dir, synthetic_data_dir, f"pretrained={checkpoint}", "epochs=2")
    assert refused.returncode == 2
    assert [line for line in refused.stdout.splitlines() if "error:" in line] == [
        line for line in refused.stdout.splitlines() if "last.pt exists" in line
    ]

    resumed = finetune(
        run_dir, synthetic_data_dir, f"pretrained={checkpoint}", "epochs=2", "resume=true"
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "after epoch 1" in resumed.stdout and "epoch 2/2" in resumed.stdout
    assert "epoch 1/2" not in resumed.stdout
    second = check_results(run_dir, checkpoint, epochs=2)
    assert [second[k] for k in RECALL_KEYS] == [first[k] for k in RECALL_KEYS]
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2
    log = [json.loads(line) for line in (run_dir / "finetune.log.json").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2]  # 10 iterations an epoch, one line each


def test_pre_train_false_routes_to_the_same_code(
    synthetic_data_dir: Path, checkpoint: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "main"
    done = run(
        "fedvssl.main", "pre_train=false", f"pretrained_model_path={checkpoint}",
        f"hydra.run.dir={run_dir}", f"data_dir={synthetic_data_dir}", "experiment=smoke",
        "+finetune.epochs=1", "+finetune.num_clips=2", "+finetune.progress=false",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = check_results(run_dir, checkpoint, epochs=1)
    assert results["config"]["crop_size"] == 32 and results["config"]["seed"] == 7
    assert not (run_dir / "fedvssl_results").exists()  # no pre-training happened


@pytest.mark.parametrize("kind", ["missing", "not a checkpoint"])
def test_bad_checkpoint_gives_one_error_line(
    synthetic_data_dir: Path, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "model.npz"
    if kind == "not a checkpoint":
        path.write_text("hello")
    done = finetune(tmp_path / "run", synthetic_data_dir, f"pretrained={path}", "epochs=1")
    assert done.returncode == 2
    errors = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(path) in errors[0], done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_finetune_config_from_a_pre_training_config(tmp_path: Path) -> None:
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    from fedvssl.finetune import DownstreamError, finetune_config

    with initialize(config_path="../conf", version_base="1.3"):
        base = compose(
            config_name="base", overrides=[f"data_dir={tmp_path}", "experiment=smoke", "seed=3"]
        )
    cfg: dict[str, Any] = OmegaConf.to_container(base, resolve=True)  # type: ignore[assignment]
    cfg["finetune"] = {"epochs": 2, "optimizer": {"lr": 0.5}}
    ft = finetune_config(cfg, "some.npz")
    assert ft["pretrained"] == "some.npz" and ft["seed"] == 3
    assert ft["dataset"] == cfg["dataset"] and ft["dataset"]["root"] == f"{tmp_path}/synthetic"
    assert (ft["clip_len"], ft["crop_size"], ft["model"]["width"]) == (8, 32, 16)
    assert ft["epochs"] == 2 and ft["optimizer"]["lr"] == 0.5
    assert ft["optimizer"]["weight_decay"] == 5e-4 and ft["optimizer"]["milestones"] == [60, 120]
    cfg["finetune"] = {"epoch": 2}
    with pytest.raises(DownstreamError, match="epoch"):
        finetune_config(cfg, None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], None),
        (["frame_stride=0"], "frame_stride must be at least 1, got 0"),
        (["eval_batch_size=-2"], "eval_batch_size must be at least 1, got -2"),
        (["epochs=-1"], "epochs must be 0 (retrieval only) or more, got -1"),
        (["batch_size=abc"], "batch_size must be an integer, got 'abc'"),
        (
            ["optimizer.milestones=60"],
            "optimizer.milestones must be a list of integers, e.g. [1, 5], got 60",
        ),
        (["resume=maybe"], "resume must be true or false, got 'maybe'"),
    ],
)
def test_finetune_settings_are_typed_once_and_checked(
    overrides: list[str], message: str | None
) -> None:
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    from fedvssl.finetune import DownstreamError
    from fedvssl.finetune_settings import FinetuneSettings

    with initialize(config_path="../conf", version_base="1.3"):
        cfg = compose(config_name="finetune", overrides=["optimizer.lr=0.5", *overrides])
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    if message is not None:
        with pytest.raises(DownstreamError) as refused:
            FinetuneSettings.from_config(plain)
        assert str(refused.value) == message
        return
    run = FinetuneSettings.from_config(plain)
    assert run.recall_ks == (1, 5, 10, 20, 50) and run.optimisation.milestones == (60, 120)
    assert (run.optimisation.lr, run.optimisation.weight_decay, run.dropout) == (0.5, 5e-4, 0.5)
    assert (run.epochs, run.num_clips, run.frame_stride) == (150, 10, 2)


def test_random_backbone_retrieval_only_in_process(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    from fedvssl.finetune import downstream

    with initialize(config_path="../conf", version_base="1.3"):
        cfg = compose(
            config_name="finetune",
            overrides=[f"data_dir={synthetic_data_dir}", "epochs=0", "model.width=8", *TINY],
        )
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    results = downstream(plain, tmp_path)
    assert results["checkpoint"] is None and results["epochs"] == 0
    assert set(RECALL_KEYS) <= set(results) and "top1" not in results
    assert json.loads((tmp_path / "results.json").read_text())["R@1"] == results["R@1"]
    assert not (tmp_path / "last.pt").exists()


def test_round_evaluator_builds_its_datasets_once(
    synthetic_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    import fedvssl.evaluation as evaluation_module
    from fedvssl.settings import round_evaluation

    with initialize(config_path="../conf", version_base="1.3"):
        base = compose(
            config_name="base",
            overrides=[
                f"data_dir={synthetic_data_dir}", "experiment=smoke", "evaluation.num_clips=2",
                "evaluation.max_videos=12", "evaluation.batch_size=4",
            ],
        )  # fmt: skip
    cfg: dict[str, Any] = OmegaConf.to_container(base, resolve=True)  # type: ignore[assignment]
    built: list[int] = []
    original = evaluation_module.multi_clip

    def counting(source: Any, items: list[Any], **clips: int) -> Any:
        built.append(len(items))
        assert clips["num_clips"] == 2 and clips["clip_len"] == 8 and clips["crop_size"] == 32
        return original(source, items, **clips)

    monkeypatch.setattr(evaluation_module, "multi_clip", counting)
    evaluate = evaluation_module.make_round_evaluator(round_evaluation(cfg))
    assert built == [12, 12]  # queries and gallery, evenly spaced subsets
    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in build_ctp(width=16, clip_len=8).state_dict().items()}
    first = evaluate(1, state)
    assert set(first) == {"R@1", "R@5"} and all(0 <= v <= 100 for v in first.values())
    assert evaluate(2, state) == first  # the same backbone gives the same numbers
    assert built == [12, 12]


def test_a_cached_published_file_is_checked_on_every_use_and_moved_aside(
    synthetic_data_dir: Path, checkpoint: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / "fedvssl-a0.9-b1.npz"
    shutil.copyfile(checkpoint, cached)  # saved by hand: a width-16 model, not the published one
    run_dir = tmp_path / "run"
    done = finetune(
        run_dir, synthetic_data_dir, "pretrained=published:fedvssl-a0.9-b1",
        f"published_cache={cache}", "published_url=http://127.0.0.1:9/nothing-listens", "epochs=0",
    )  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and "width-16 backbone, expected 64" in errors[0], done.stdout
    assert f"moved to {cached}.rejected" in errors[0] and "Traceback" not in done.stderr
    assert not cached.exists() and (cache / "fedvssl-a0.9-b1.npz.rejected").is_file()
    assert not (run_dir / "results.json").exists()


def test_unknown_published_name_lists_the_names(synthetic_data_dir: Path, tmp_path: Path) -> None:
    done = run(
        "fedvssl.main", "pre_train=false", "pretrained_model_path=published:unknown-name",
        f"hydra.run.dir={tmp_path / 'run'}", f"data_dir={synthetic_data_dir}", "experiment=smoke",
    )  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and "unknown-name" in errors[0] and "fedvssl-a0.9-b1" in errors[0]
