r"""A federated round's client work on one device, without Flower: C clients, P side by side.

Each of ``--parallel`` processes on the device stands for one Ray client actor (what
``client_resources.num_gpus=1/P`` gives under Ray): it runs the clients' own code,
:func:`fedvssl.local_training.train_locally` (the global model in, one local epoch of the
client's partition, the arrays out), for its share of the ``--clients`` partitions every round,
and keeps its model, its loader workers and (``--compile``) its compiled model across rounds and
clients, as an actor does. Rounds start together; a round ends when its last client is done.
Aggregation is not included (``benchmarks.aggregation`` times it: well under a second).

The input is a UCF-like set of 320x240 frame zips (``benchmarks.pipeline``'s, ``--data`` keeps it),
laid out as a prepared dataset with ``--per-client`` videos in each client's partition; where
there are fewer videos than that, partitions repeat them under other names (links to the same
zips). The report gives every round's seconds and clips per second (all processes together) and
projects the Flower baseline's UCF-101 run, 20 rounds of 5 clients x 1,907 clips, from the last
round's rate (the first one also starts the processes, workers and compilation).

    python -m benchmarks.client_round [--videos 400] [--frames 60] [--data DIR] [--clients 5]
        [--per-client 400] [--parallel 1 4] [--rounds 2] [--augment device] [--workers 4]
        [--batch 32] [--width 64] [--crop-size 112] [--clip-len 16] [--compile] [--device cuda]
        [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks import machine_info, pick_device, write_report
from benchmarks.pipeline import add_input_arguments, open_input
from CtP.datasets import Annotation
from fedvssl.settings import ClientSettings

BASELINE_CLIPS = 20 * 5 * 1907  # the Flower baseline's UCF-101 run: 20 rounds, 5 clients (§4.1)
PARTITION = "annotations/client_distribution/client_dist{client}.json"


def lay_out_partitions(
    source: Path, annotations: list[Annotation], root: Path, clients: int, per_client: int
) -> None:
    """Write a prepared-dataset layout under ``root``: ``clients`` partitions of ``per_client``.

    Video ``k`` of the layout is ``annotations[k % len(annotations)]``, named apart by a suffix
    and linked to that video's zip, so that every partition lists distinct videos.
    """
    for client in range(clients):
        items = []
        for k in range(client * per_client, (client + 1) * per_client):
            item = annotations[k % len(annotations)]
            name = f"{item.name}_r{k // len(annotations)}"
            link = root / "zips" / f"{name}.zip"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((source / "zips" / f"{item.name}.zip").resolve())
            items.append({"name": name, "label": item.label})
        path = root / PARTITION.format(client=client + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(items))


def client_settings(root: Path, results: Path, args: argparse.Namespace) -> ClientSettings:
    """Make the clients' settings: the reference optimiser, bf16 and channels_last_3d on CUDA."""
    return ClientSettings(
        results_dir=str(results), dataset_root=str(root), frames="zip",
        zip_template="zips/{name}.zip", video_template="UCF101_raw/{video}.avi",
        partition_template=PARTITION, width=args.width, clip_len=args.clip_len,
        crop_size=args.crop_size, batch_size=args.batch, workers=args.workers, local_epochs=1,
        lr=0.01, momentum=0.9, weight_decay=1e-4, grad_clip=40.0, seed=args.seed, bf16=True,
        channels_last=True, log_interval=10, progress=False, num_threads=args.threads,
        augment=args.augment, compile=args.compile,
    )  # fmt: skip


def _slot(
    settings: dict[str, Any], partitions: list[int], rounds: int, device: str, barrier: Any,
    done: Any,
) -> None:  # fmt: skip
    """One client process: every round, train its partitions one after the other."""
    from CtP.pretext import pretext_from_mapping  # in the spawned process
    from fedvssl.local_training import train_locally

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    pretext = pretext_from_mapping({"name": "ctp"}, {})  # the reference recipe
    config = ClientSettings(**(settings | {"pretext": pretext}))
    model = pretext.build_model(width=config.width, clip_len=config.clip_len)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for server_round in range(1, rounds + 1):
        barrier.wait()
        clips = 0
        for partition in partitions:
            state, metrics = train_locally(config, partition, server_round, state, partial=True)
            clips += int(metrics["num-examples"])  # type: ignore[arg-type]
        done.put((server_round, clips))
        barrier.wait()


def time_rounds(
    settings: ClientSettings, args: argparse.Namespace, parallel: int
) -> dict[str, Any]:
    """Run ``args.rounds`` rounds of ``args.clients`` clients with ``parallel`` processes."""
    context = mp.get_context("spawn")  # CUDA cannot be used in forked processes
    barrier, done = context.Barrier(parallel + 1), context.Queue()
    plain = {k: v for k, v in asdict(settings).items() if k != "pretext"}
    shares = [list(range(args.clients))[p::parallel] for p in range(parallel)]
    device = str(pick_device(args.device))
    processes = [
        context.Process(target=_slot, args=(plain, share, args.rounds, device, barrier, done))
        for share in shares
    ]
    started = time.perf_counter()
    for process in processes:
        process.start()
    rounds = []
    try:
        for server_round in range(1, args.rounds + 1):
            barrier.wait(timeout=args.timeout)
            begun = time.perf_counter()
            barrier.wait(timeout=args.timeout)
            seconds = time.perf_counter() - begun
            clips = sum(done.get(timeout=10)[1] for _ in processes)
            rounds.append({"round": server_round, "seconds": round(seconds, 3), "clips": clips,
                           "clips_per_s": round(clips / seconds, 2)})  # fmt: skip
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    rate = rounds[-1]["clips_per_s"]
    return {
        "parallel": parallel,
        "clients_per_process": [len(s) for s in shares],
        "rounds": rounds,
        "start_up_s": round(time.perf_counter() - started - sum(r["seconds"] for r in rounds), 3),
        "baseline_projection_min": round(BASELINE_CLIPS / rate / 60, 2),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser)
    parser.add_argument("--clients", type=int, default=5, help="clients (partitions) per round")
    parser.add_argument("--per-client", type=int, default=400, help="videos per partition")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1], help="client processes")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (the first starts up)")
    parser.add_argument("--augment", choices=("cpu", "device"), default="device")
    parser.add_argument("--workers", type=int, default=4, help="loader workers per process")
    parser.add_argument("--batch", type=int, default=32, help="clips per step")
    parser.add_argument("--width", type=int, default=64, help="backbone width (64: R3D-18)")
    parser.add_argument("--crop-size", type=int, default=112, help="clip side in pixels")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of a CPU client")
    parser.add_argument("--seed", type=int, default=0, help="sampling and shuffling seed")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a round may take")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--output", type=Path, help="JSON file (default: stdout)")
    args = parser.parse_args(argv)
    if min(args.clients, args.per_client, args.rounds, args.batch, args.width, *args.parallel) < 1:
        parser.error("--clients, --per-client, --rounds, --batch, --width, --parallel must be >= 1")
    if max(args.parallel) > args.clients:
        parser.error("--parallel cannot exceed --clients")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its JSON report."""
    args = parse_args(argv)
    device = pick_device(args.device)
    with contextlib.ExitStack() as stack:
        source, annotations, described = open_input(args, stack)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="client_round_")))
        lay_out_partitions(source, annotations, work / "data", args.clients, args.per_client)
        settings = client_settings(work / "data", work / "results", args)
        report: dict[str, Any] = {
            "benchmark": "client_round",
            "machine": machine_info(device),
            "input": described | {"videos": len(annotations), "per_client": args.per_client},
            "clients": args.clients,
            "settings": {k: v for k, v in asdict(settings).items() if k != "pretext"},
            "results": [],
        }
        for parallel in args.parallel:
            report["results"].append(time_rounds(settings, args, parallel))
            if args.output is not None:  # a run cut short keeps what it measured
                write_report(report, args.output)
    if args.output is None:
        write_report(report, None)


if __name__ == "__main__":
    main()
