"""The apps beyond ``python -m fedvssl.main``: ``flwr run``, SuperLink + SuperNodes, Ray clusters.

Every test runs on loopback with the tiny synthetic set, starts its own Flower (and Ray)
processes in their own session, with their own ``FLWR_HOME`` and free ports, and stops them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedvssl.checkpoints import load_global_checkpoint
from fedvssl.simulation import RayClusterError, check_ray_init_args

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flwr, flower-superlink, flower-supernode, ray
TINY = "experiment=smoke client_resources.num_cpus=1 log_interval=2"  # conftest.SMOKE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def flower_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment of its own: FLWR_HOME, ports of the local SuperLink; stops what it started."""
    home = tmp_path / "flwr_home"
    env = os.environ | {
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    yield env
    stop_processes_mentioning(str(home))


def stop_processes_mentioning(text: str) -> None:
    """Kill the processes whose command line names ``text`` (the local SuperLink of flwr run)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def checkpoint(run_dir: Path, server_round: int) -> dict[str, np.ndarray]:
    return load_global_checkpoint(
        run_dir / "fedvssl_results" / f"round-{server_round}-weights.array.npz"
    )


def test_flwr_run_simulation_gives_the_aggregates_of_fedvssl_main(
    synthetic_data_dir: Path,
    tmp_path: Path,
    flower_env: dict[str, str],
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    hydra_dir, hydra = smoke_run  # python -m fedvssl.main data_dir=... with TINY's overrides
    assert hydra.returncode == 0, hydra.stdout + hydra.stderr
    overrides = f"{TINY} data_dir={synthetic_data_dir}"
    flwr_dir = tmp_path / "flwr"

    flwr = subprocess.run(
        [
            str(BIN / "flwr"), "run", ".", "--stream",
            "--federation-config", "num-supernodes=2 client-resources-num-cpus=1",
            "--run-config", f"run-dir='{flwr_dir}' overrides='{overrides}'",
        ],
        cwd=ROOT, env=flower_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert flwr.returncode == 0, flwr.stdout + flwr.stderr
    assert "round 2/2: loss" in flwr.stdout  # the round line, streamed from the ServerApp
    assert "round 2/2: loss" in (flwr_dir / "server.log").read_text()

    for server_round in (1, 2):  # the same arrays, bit for bit, and the same weights
        ours, theirs = checkpoint(flwr_dir, server_round), checkpoint(hydra_dir, server_round)
        assert list(ours) == list(theirs) and len(ours) == 126
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (flwr_dir, hydra_dir)]
    assert [[c["weight"] for c in r["clients"]] for r in metrics[0]["rounds"]] == [
        [c["weight"] for c in r["clients"]] for r in metrics[1]["rounds"]
    ]
    for client in (1, 2):
        assert list((flwr_dir / "fedvssl_results" / f"client{client}").glob("*.log.json"))


def make_keys(folder: Path, nodes: list[str]) -> Path:
    """A CA, a SuperLink certificate for 127.0.0.1 (openssl) and node key pairs (ssh-keygen).

    Flower authenticates SuperNodes by OpenSSH-format ECDSA keys; TLS takes PEM certificates.
    """
    folder.mkdir()

    def run(*command: str) -> None:
        subprocess.run(command, cwd=folder, check=True, capture_output=True, timeout=60)

    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-days", "2", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=FedVSSL test CA")  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost")  # fmt: skip
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-sha256",
        "-extfile", "server.ext")  # fmt: skip
    for node in nodes:
        run("ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", node, "-f", node)
    return folder


class Processes:
    """Long-running Flower processes, each in its own session, its output in a file."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(
                command, cwd=self.folder, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.started[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.started.values():
            with contextlib.suppress(ProcessLookupError):  # the group: superexec, app processes
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def wait_until_listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def test_federation_with_tls_and_node_authentication(
    synthetic_data_dir: Path, tmp_path: Path, flower_env: dict[str, str]
) -> None:
    """SuperLink + SuperNodes on loopback: TLS, registered node keys, each node its own data.

    Nodes 0 and 1 train (node 1 from its own annotation list, into its own results folder); a
    third node's key is not registered: it is refused and the run goes on without it. (A node
    without its partition: tests/test_client.py; a failed client reported: test_federated.py.)
    """
    keys = make_keys(tmp_path / "keys", ["node0", "node1", "stranger"])
    port, dead = free_port(), free_port()
    home = Path(flower_env["FLWR_HOME"])
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deployment"\n\n[superlink.deployment]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{keys / "ca.crt"}"\n\n'
        f'[superlink.nowhere]\naddress = "127.0.0.1:{dead}"\ninsecure = true\n'
    )
    own = tmp_path / "node1_own"
    own.mkdir()
    partitions = synthetic_data_dir / "synthetic" / "annotations" / "client_distribution"
    (own / "mine.json").write_text((partitions / "client_dist2.json").read_text())
    (tmp_path / "procs").mkdir()
    procs = Processes(tmp_path / "procs", flower_env)
    try:
        procs.start(
            "superlink", str(BIN / "flower-superlink"), "--port", str(port),
            "--ssl-ca-certfile", str(keys / "ca.crt"), "--ssl-certfile", str(keys / "server.pem"),
            "--ssl-keyfile", str(keys / "server.key"), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
        )  # fmt: skip
        wait_until_listening(port)
        for node in ("node0", "node1"):
            subprocess.run(
                [BIN / "flwr", "supernode", "register", keys / f"{node}.pub", "deployment"],
                env=flower_env, check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        node_configs = {
            "node0": f"partition-id=0 data-dir='{synthetic_data_dir}'",
            "node1": f"partition-id=1 data-dir='{synthetic_data_dir}' "
            f"annotations='{own / 'mine.json'}' results-dir='{own / 'results'}'",
            "stranger": f"partition-id=0 data-dir='{synthetic_data_dir}'",
        }
        for node, node_config in node_configs.items():
            procs.start(
                node, str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}",
                "--root-certificates", str(keys / "ca.crt"),
                "--auth-supernode-private-key", str(keys / node), "--port", str(free_port()),
                "--node-config", node_config,
            )  # fmt: skip
        run_dir = tmp_path / "run"
        overrides = f"{TINY} dataset.auto_prepare=false round_timeout=300"
        done = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "deployment", "--stream",
             "--run-config", f"run-dir='{run_dir}' overrides='{overrides}'"],
            cwd=ROOT, env=flower_env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + procs.log("superlink")
        assert procs.started["stranger"].wait(timeout=120) != 0  # refused, and it does not retry
        assert "Failed to activate SuperNode" in procs.log("stranger")
        state = checkpoint(run_dir, 2)
        assert len(state) == 126 and list(state)[-1] == "head.pred_head.bias"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for record in metrics["rounds"]:
            assert [c["id"] for c in record["clients"]] == [1, 2] and record["aggregated"]
            assert record["failures"] == []
        assert "round 2/2: loss" in done.stdout
        # each node keeps its logs and its own pretext head where it was told to
        assert list((run_dir / "fedvssl_results" / "client1").glob("*.log.json"))
        assert (run_dir / "fedvssl_results" / "client1" / "head-round-2.pt").is_file()
        assert list((own / "results" / "client2").glob("*.log.json"))
        assert (own / "results" / "client2" / "head-round-2.pt").is_file()

        wrong = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "nowhere"],
            cwd=ROOT, env=flower_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert wrong.returncode != 0 and "unavailable" in wrong.stdout + wrong.stderr
    finally:
        procs.stop_all()


@pytest.fixture
def ray_head() -> Iterator[tuple[str, Path]]:
    """A Ray head on loopback, started as a user would (``ray start --head``); stopped after."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must be short
    address = f"127.0.0.1:{free_port()}"
    head = subprocess.Popen(
        [
            str(BIN / "ray"), "start", "--head", "--block", "--port", address.split(":")[1],
            "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "0",
            "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (temp / "ray_current_cluster").exists():
            assert head.poll() is None and time.monotonic() < deadline, "ray start failed"
            time.sleep(0.2)
        yield address, temp
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def test_simulation_joins_a_running_ray_cluster_and_survives_a_failing_client(
    synthetic_data_dir: Path, tmp_path: Path, ray_head: tuple[str, Path]
) -> None:
    address, temp = ray_head
    # the dataset linked file by file, with client 2's zips damaged: the dataset passes the
    # checks before the run (every listed zip is there), and client 2 fails in every round
    data = tmp_path / "data"
    shutil.copytree(synthetic_data_dir / "synthetic", data / "synthetic", copy_function=os.symlink)
    partition = data / "synthetic" / "annotations" / "client_distribution" / "client_dist2.json"
    for record in json.loads(partition.read_text()):
        zip_path = data / "synthetic" / "zips" / f"{record['name']}.zip"
        zip_path.unlink()
        zip_path.write_bytes(b"not a zip")
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable, "-m", "fedvssl.main", f"hydra.run.dir={run_dir}",
            f"data_dir={data}", *TINY.split(), "rounds=1", f"ray_init_args.address={address}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(checkpoint(run_dir, 1)) == 126
    record = json.loads((run_dir / "metrics.json").read_text())["rounds"][0]
    assert [c["id"] for c in record["clients"]] == [1]  # client 2 failed: reported, not fatal
    assert record["aggregated"] and len(record["failures"]) == 1
    assert record["failures"][0].startswith("partition 1: client 2: VideoReadError:")
    # the client actors ran on the cluster's node (their logs are in its session), which lives on
    logs = temp / "session_latest" / "logs"
    assert any("ClientAppActor" in p.read_text(errors="replace") for p in logs.glob("worker-*"))
    ray_status = subprocess.run(
        [str(BIN / "ray"), "status", "--address", address], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert ray_status.returncode == 0, ray_status.stdout + ray_status.stderr

    nowhere = subprocess.run(
        [
            sys.executable, "-m", "fedvssl.main", f"hydra.run.dir={tmp_path / 'nowhere'}",
            f"data_dir={synthetic_data_dir}", *TINY.split(),
            f"ray_init_args.address=127.0.0.1:{free_port()}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    errors = [line for line in nowhere.stdout.splitlines() if "error:" in line]
    assert nowhere.returncode == 2 and len(errors) == 1, nowhere.stdout + nowhere.stderr
    assert "cannot join the Ray cluster" in errors[0]


def test_a_key_ray_init_does_not_take_is_refused_before_ray_starts() -> None:
    # ray.init raises on an unknown key, and run_simulation then hangs: refused before it
    with pytest.raises(
        RayClusterError,
        match=r"^ray_init_args\.num_cpuss is not an argument of ray\.init \(did you mean "
        r"ray_init_args\.num_cpus\?\)",
    ):
        check_ray_init_args({"num_cpus": 2, "num_cpuss": 2, "address": None})
    check_ray_init_args({"num_cpus": 2, "_temp_dir": "/tmp/ray", "address": None})  # taken
