"""``python -m fedvssl.finetune``: retrieval and fine-tuning of a pre-trained backbone (Hydra).

1. read the backbone of any checkpoint (``pretrained=PATH``; ``null`` keeps a random one);
2. retrieval with frozen features: test videos query the train videos, R@1/5/10/20/50
   (reference §7.2);
3. fine-tune the whole classifier (reference §7.1), keeping ``last.pt`` every epoch (and
   ``best.pt`` with ``validate_every``), then the 10-clip video-level test;
4. write ``results.json`` in the run folder and log a small table.

``python -m fedvssl.main pre_train=false pretrained_model_path=PATH`` comes here through
:func:`run_downstream`. The test data (splits, multi-clip datasets) come from
:mod:`fedvssl.evaluation`, which also holds pre-training's per-round retrieval. Bad input ends the
run with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from CtP.backbone import load_backbone
from CtP.classifier import Classifier, build_classifier, video_accuracy
from CtP.datasets import Annotation, ClipDataset, FrameSource, MultiClipDataset, VideoReadError
from CtP.retrieval import build_retrieval_model, extract_features, retrieval_metrics
from CtP.train import build_optimizer, make_loader, train_one_epoch
from CtP.transforms import FinetuneAugmentation
from fedvssl.checkpoints import CheckpointError, check_finite, load_backbone_state
from fedvssl.data.atomic import atomic_path, write_bytes_atomic
from fedvssl.evaluation import (
    Config,
    DatasetFiles,
    DownstreamError,
    load_splits,
    multi_clip,
    pick_device,
)
from fedvssl.finetune_settings import FinetuneSettings
from fedvssl.guard.command_line import check_command_line
from fedvssl.guard.fingerprint import (
    FINETUNE_FREE,
    check_fingerprint,
    deciding,
    file_hash,
    write_fingerprint,
)
from fedvssl.guard.run_folder import RunFolder, hydra_record
from fedvssl.published import DRIVE_URL, resolve_checkpoint

logger = logging.getLogger(__name__)

FINETUNE_FLIP_PROB = 0.35  # reference §7.1

BackboneState = dict[str, torch.Tensor]
# Keys a pre-training run hands on to fine-tuning (pre_train=false): the data and the clip geometry.
FORWARDED_KEYS = ("data_dir", "seed", "resume", "clip_len", "crop_size", "workers", "bf16",
                  "channels_last")  # fmt: skip


def test_clips(
    run: FinetuneSettings, source: FrameSource, items: list[Annotation]
) -> MultiClipDataset:
    """The ``num_clips`` uniformly spaced clips of every video in ``items`` (reference §7.1)."""
    return multi_clip(
        source, items, clip_len=run.clip_len, stride=run.frame_stride, crop_size=run.crop_size,
        num_clips=run.num_clips,
    )  # fmt: skip


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def run_retrieval(
    run: FinetuneSettings, run_dir: Path, state: BackboneState | None, width: int,
    queries: MultiClipDataset, gallery: MultiClipDataset,
) -> dict[str, float]:  # fmt: skip
    """Compute R@k of the test split against the train split (kept in ``retrieval.json``)."""
    path = run_dir / "retrieval.json"
    if run.resume and path.is_file():
        logger.info("retrieval results of the interrupted run: %s", path)
        kept: dict[str, float] = json.loads(path.read_text())
        return kept
    torch.manual_seed(run.seed)  # the random-backbone baseline is seeded too
    model, options = build_retrieval_model(state, width=width), _inference_options(run)
    q = extract_features(model, queries, desc="retrieval: queries", **options)
    g = extract_features(model, gallery, desc="retrieval: gallery", **options)
    metrics = retrieval_metrics(q, g, list(run.recall_ks), options["device"])
    metrics["retrieval_left_out"] = q.left_out + g.left_out
    write_bytes_atomic(json.dumps(metrics).encode(), path)
    return metrics


def _inference_options(run: FinetuneSettings) -> dict[str, Any]:
    return {
        "device": pick_device(), "batch_size": run.eval_batch_size, "workers": run.workers,
        "bf16": run.bf16, "channels_last": run.channels_last, "progress": run.progress,
    }  # fmt: skip


def evaluate_classifier(
    run: FinetuneSettings, model: Classifier, test_set: MultiClipDataset
) -> dict[str, float]:
    """Test at video level: clip logits averaged per video; top-1, top-5, mean class accuracy."""
    scores = extract_features(model, test_set, desc="test", **_inference_options(run))
    if not scores.valid.any():
        raise DownstreamError("no test video could be read; check the dataset's zips")
    if scores.left_out:
        logger.warning("the test leaves out %d unreadable videos", scores.left_out)
    return video_accuracy(*scores.kept()) | {"test_left_out": scores.left_out}


def resume_point(
    run_dir: Path, resume: bool, model: Classifier, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, dict[str, float] | None]:  # fmt: skip
    """Restore ``last.pt`` when resuming; returns the first epoch to train and the best so far."""
    path = run_dir / "last.pt"
    if not resume or not path.is_file():
        if resume:
            logger.warning("resume=true but %s does not exist: fine-tuning from epoch 1", path)
        return 1, None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        check_finite(path, saved["model"])
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except CheckpointError as err:
        raise DownstreamError(f"{err}; or use a new hydra.run.dir") from None
    except Exception as err:  # unreadable, or another model: torch raises many types
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DownstreamError(
            f"{path} cannot be resumed ({reason}); use a new hydra.run.dir"
        ) from None
    logger.info("resuming the fine-tuning after epoch %d from %s", saved["epoch"], path)
    return int(saved["epoch"]) + 1, saved.get("best")


def build_finetuning(
    run: FinetuneSettings, state: BackboneState | None, width: int, num_classes: int,
    device: torch.device,
) -> tuple[Classifier, torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:  # fmt: skip
    """Build the classifier (backbone from ``state``), SGD and the step decay (reference §7.1)."""
    opt = run.optimisation
    torch.manual_seed(run.seed)
    model = build_classifier(width=width, num_classes=num_classes, dropout=run.dropout)
    if state is not None:
        load_backbone(model, state)
    model.to(device)
    if run.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    optimizer = build_optimizer(
        model, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, list(opt.milestones), gamma=opt.gamma
    )
    return model, optimizer, scheduler


def finetune(
    run: FinetuneSettings, run_dir: Path, state: BackboneState | None, width: int,
    num_classes: int, dataset: DatasetFiles, train: list[Annotation], test_set: MultiClipDataset,
) -> dict[str, Any]:  # fmt: skip
    """Fine-tune the whole classifier (reference §7.1), then test it; returns the test metrics."""
    seed, device = run.seed, pick_device()
    model, optimizer, scheduler = build_finetuning(run, state, width, num_classes, device)
    first, best = resume_point(run_dir, run.resume, model, optimizer, scheduler)
    # a horizontal flip would turn one class into another on a dataset whose classes are directions
    flip_prob = 0.0 if dataset.flip_changes_label else FINETUNE_FLIP_PROB
    train_set = ClipDataset(
        train, dataset.frame_source(),
        FinetuneAugmentation(crop_size=run.crop_size, flip_prob=flip_prob),
        clip_len=run.clip_len, stride=run.frame_stride, seed=seed,
    )  # fmt: skip
    epochs, validate_every = run.epochs, run.validate_every
    for epoch in range(first, epochs + 1):
        torch.manual_seed(seed * 1_000_003 + epoch)  # dropout: the same whether resumed or not
        train_set.set_epoch(epoch)
        loader = make_loader(
            train_set, batch_size=run.batch_size, workers=run.workers,
            seed=seed * 7919 + epoch, pin_memory=device.type == "cuda",
        )  # fmt: skip
        result = train_one_epoch(
            model, loader, optimizer, device=device, epoch=epoch,
            grad_clip=run.optimisation.grad_clip, bf16=run.bf16,
            channels_last=run.channels_last, log_path=run_dir / "finetune.log.json",
            log_interval=run.log_interval, progress=run.progress,
            loss_fn=lambda batch: model.losses(batch["imgs"], batch["label"]),
        )  # fmt: skip
        scheduler.step()
        line = f"epoch {epoch}/{epochs}: loss {result.loss:.4f}, {result.seconds:.1f} s"
        if validate_every > 0 and epoch % validate_every == 0:
            metrics = evaluate_classifier(run, model, test_set)
            line += f", test top-1 {metrics['top1']:.2f}"
            if best is None or metrics["top1"] > best["top1"]:
                best = {"epoch": epoch, **metrics}
                save_atomic({"model": model.state_dict(), "epoch": epoch}, run_dir / "best.pt")
        save_atomic(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best},
            run_dir / "last.pt",
        )  # fmt: skip
        logger.info(line)
    return evaluate_classifier(run, model, test_set) | ({"best": best} if best else {})


def check_run_dir(run: FinetuneSettings, run_dir: Path) -> None:
    """Refuse, with one line, to overwrite a fine-tuning that ``resume`` would continue."""
    if run.epochs > 0 and (run_dir / "last.pt").is_file() and not run.resume:
        raise DownstreamError(
            f"{run_dir / 'last.pt'} exists: pass resume=true to continue that fine-tuning, or "
            "choose another hydra.run.dir"
        )


def check_resumed(run: FinetuneSettings, run_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume with other settings or another pre-trained file than the folder's run.

    Resuming reuses ``retrieval.json`` and continues ``last.pt``: both must come from the same
    deciding settings and pre-trained file (:mod:`fedvssl.guard.fingerprint`).
    """
    if run.resume and any((run_dir / name).is_file() for name in ("last.pt", "retrieval.json")):
        check_fingerprint(run_dir, fingerprint)


def finetune_fingerprint(cfg: Config, pretrained: str | None) -> dict[str, Any]:
    """Return the deciding settings of a fine-tuning: its config and the pre-trained file's hash."""
    return deciding(cfg, FINETUNE_FREE) | {
        "pretrained_sha256": file_hash(pretrained) if pretrained else None
    }


def downstream(
    cfg: Config, run_dir: str | Path, accept: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run retrieval, then fine-tuning and test; write and return ``results.json``'s content.

    Every check that can refuse the run comes before ``accept()``, which makes the run the owner
    of its folder (:class:`fedvssl.guard.run_folder.RunFolder`); then its fingerprint is written.
    """
    started, run_dir = time.perf_counter(), Path(run_dir)
    run = FinetuneSettings.from_config(cfg)
    check_run_dir(run, run_dir)
    pretrained = resolve_checkpoint(
        cfg["pretrained"], cfg.get("published_cache"), url=cfg.get("published_url", DRIVE_URL),
        progress=run.progress,
    )  # fmt: skip
    state = load_backbone_state(pretrained) if pretrained else None
    fingerprint = finetune_fingerprint(cfg, pretrained)
    check_resumed(run, run_dir, fingerprint)
    dataset = DatasetFiles.from_config(cfg["dataset"])
    train, test = load_splits(dataset, str(cfg["data_dir"]))
    num_classes = dataset.num_classes or max(a.label for a in train + test)
    width = int(state["stem.conv.weight"].shape[0]) if state else run.width
    if accept is not None:
        accept()
    write_fingerprint(run_dir, fingerprint)
    logger.info(
        "%s: %d train / %d test videos, %d classes; backbone %s (width %d) on %s",
        dataset.name, len(train), len(test), num_classes, pretrained or "random",
        width, pick_device(),
    )  # fmt: skip
    source = dataset.frame_source()
    test_set = test_clips(run, source, test)
    results: dict[str, Any] = {
        "checkpoint": str(Path(pretrained).resolve()) if pretrained else None,
        "dataset": dataset.name,
    }
    try:
        if run.retrieval:
            gallery = test_clips(run, source, train)
            results |= run_retrieval(run, run_dir, state, width, test_set, gallery)
        if run.epochs > 0:
            results |= finetune(run, run_dir, state, width, num_classes, dataset, train, test_set)
    except VideoReadError as err:
        raise DownstreamError(f"{err}; check the dataset in {dataset.root}") from None
    results |= {
        "epochs": run.epochs, "seconds": time.perf_counter() - started, "config": cfg,
    }  # fmt: skip
    write_bytes_atomic(json.dumps(results, indent=2).encode(), run_dir / "results.json")
    log_table(results, run_dir / "results.json")
    return results


def log_table(results: dict[str, Any], path: Path) -> None:
    """Log the headline numbers as a small table."""
    keys = [k for k in results if k.startswith("R@")]
    keys += [k for k in ("top1", "top5", "mean_class_accuracy") if k in results]
    names = {"top1": "top-1", "top5": "top-5", "mean_class_accuracy": "mean class"}
    header = " | ".join(f"{names.get(k, k):>10}" for k in keys)
    values = " | ".join(f"{results[k]:>10.2f}" for k in keys)
    logger.info("%s on %s:", results["checkpoint"] or "random backbone", results["dataset"])
    logger.info(header)
    logger.info(values)
    logger.info("results: %s", path)


def finetune_config(cfg: Config, pretrained: str | None) -> Config:
    """Compose the fine-tuning config for a pre-training config (``conf/finetune.yaml``).

    The dataset node, ``data_dir``, ``seed``, ``resume``, the clip geometry, the model width
    and the loader settings come from ``cfg``; a ``finetune`` node in ``cfg`` (e.g.
    ``+finetune.epochs=1`` on the command line) overrides any fine-tuning key.
    """
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: the same conf/ folder
        composed = compose(config_name="finetune")
    else:
        with initialize(config_path="../conf", version_base="1.3"):
            composed = compose(config_name="finetune")
    try:
        composed.dataset = cfg["dataset"]
        for key in FORWARDED_KEYS:
            composed[key] = cfg[key]
        composed.model.width = cfg["model"]["width"]
        composed.pretrained = pretrained
        merged = OmegaConf.merge(composed, cfg.get("finetune") or {})
    except OmegaConfBaseException as err:
        raise DownstreamError(f"bad fine-tuning settings: {err}".splitlines()[0]) from None
    plain = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}


def run_downstream(
    cfg: Config, run_dir: str, pretrained: str | None, accept: Callable[[], None] | None = None
) -> None:
    """Run retrieval and fine-tuning from a pre-training config (``pre_train=false``).

    Parameters
    ----------
    cfg : dict
        The composed pre-training config (``conf/base.yaml``), resolved.
    run_dir : str
        Where ``results.json`` and the fine-tuning checkpoints go.
    pretrained : str or None
        The checkpoint (None: a random backbone).
    accept : callable, optional
        Called once every check has passed (see :func:`downstream`).
    """
    downstream(finetune_config(cfg, pretrained), run_dir, accept)


USER_ERRORS = (DownstreamError, CheckpointError, ValueError, FileNotFoundError)


@hydra.main(config_path="../conf", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the Hydra entry point."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        with RunFolder(run_dir) as folder:
            record = hydra_record(cfg)
            downstream(
                {str(k): v for k, v in plain.items()}, run_dir, lambda: folder.accept(record)
            )
    except USER_ERRORS as err:
        logger.error("error: %s", err)
        sys.exit(2)


if __name__ == "__main__":
    check_command_line("finetune")
    main()
