"""A developer cluster on this machine: ``shardguard dev up`` / ``status`` / ``down`` (issue 6).

``up`` starts one coordinator (SQLite) and N nodes on the *simulated* platform, each a separate
OS process with its own state directory under ``--dir`` (default ``.shardguard-dev``), waits
until every node has registered, and writes ``cluster.json`` (URL, admin token, PIDs). ``down``
stops exactly those processes by their recorded PIDs (checking each PID still runs our command
line first). Children run with ``python -P`` so that ``$PYTHONPATH`` (e.g. a pinned copy of the
package, whose code the simulated measurement hashes) decides what they import, not the current
directory. Development only: the simulated enclave protects nothing, and the admin token is
kept in a 0600 file in the cluster directory.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shardguard.client import Client

__all__ = ["Cluster", "down", "main", "up"]

CLUSTER_FILE = "cluster.json"


class Cluster(dict[str, Any]):
    """``cluster.json``: ``url``, ``token`` (admin), ``coordinator`` {pid}, ``nodes`` [{node_id,
    pid, state, enroll_token (its own, scope ``nodes:register``)[, wrap]}]."""

    @classmethod
    def load(cls, directory: Path) -> Cluster:
        path = directory / CLUSTER_FILE
        if not path.exists():
            raise FileNotFoundError(f"no cluster in {directory} (run `shardguard dev up` first)")
        return cls(json.loads(path.read_text()))


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # noqa: S603 - our own argv


def up(
    directory: Path,
    nodes: int = 3,
    *,
    port: int = 0,
    timeout: float = 60.0,
    job_timeout: float | None = None,
    wrap: Mapping[str, Sequence[str]] | None = None,
) -> Cluster:
    """Start the cluster. ``wrap`` maps a node id to a command prefix its process is started
    under (see :func:`start_node`); nodes not named start plainly."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CLUSTER_FILE).exists():
        existing = Cluster.load(directory)
        if any(_alive(p, "shardguard") for p in _pids(existing)):
            raise RuntimeError(f"a cluster is already running from {directory}; `shardguard dev down` first")
    token = "dev-" + secrets.token_hex(24)
    env = dict(os.environ, SHARDGUARD_BOOTSTRAP_TOKEN=token)
    py = sys.executable
    coord_log = directory / "coordinator.log"
    with open(coord_log, "ab") as err:
        coord = subprocess.Popen(  # noqa: S603 - our own argv
            [py, "-P", "-m", "shardguard.coordinator.server", "run", "--db", str(directory / "coordinator.sqlite3"),
             "--port", str(port), "--log-level", "warning",
             *(["--job-timeout", str(job_timeout)] if job_timeout else [])],
            stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True,
        )  # fmt: skip
    line = coord.stdout.readline().decode().strip() if coord.stdout is not None else ""
    if "listening on" not in line:
        coord.kill()
        raise RuntimeError(f"the coordinator did not start (see {coord_log})")
    url = line.split()[-1]
    cluster = Cluster(
        url=url, token=token, coordinator={"pid": coord.pid, "log": str(coord_log), "job_timeout": job_timeout}, nodes=[]
    )
    with Client(url, token) as c:
        # One enrollment token per node: it lets that node register, and its id is bound to it
        # (API.md §1.2), so no node can register as another.
        enroll = {
            f"node-{i}": str(c.create_token(["nodes:register"], label=f"dev cluster node-{i}")["token"])
            for i in range(1, nodes + 1)
        }
    for i in range(1, nodes + 1):
        node_id, state = f"node-{i}", str(directory / f"node-{i}")
        prefix = list((wrap or {}).get(node_id, ()))
        proc = _spawn(_node_argv(url, state, node_id, prefix), directory / f"{node_id}.log", node_env(enroll[node_id]))
        entry: dict[str, Any] = {"node_id": node_id, "pid": proc.pid, "state": state, "enroll_token": enroll[node_id]}
        if prefix:
            entry["wrap"] = prefix
        cluster["nodes"].append(entry)
    path = directory / CLUSTER_FILE
    path.write_text(json.dumps(cluster, indent=2) + "\n")
    path.chmod(0o600)
    with Client(url, token) as c:
        end = time.monotonic() + timeout
        while len([n for n in c.nodes() if n.get("alive", True)]) < nodes:
            if time.monotonic() > end:
                raise RuntimeError(f"only some nodes registered within {timeout:.0f} s (see {directory}/node-*.log)")
            time.sleep(0.2)
    return cluster


def node_env(enroll_token: str) -> dict[str, str]:
    """The token goes in the environment, not the command line (which every user can read)."""
    return dict(os.environ, SHARDGUARD_ENROLL_TOKEN=enroll_token)


def _node_argv(url: str, state: str, node_id: str, wrap: Sequence[str] = ()) -> list[str]:
    return [*wrap, sys.executable, "-P", "-m", "shardguard.node.service", "--coordinator", url, "--state", state,
            "--node-id", node_id, "--platform", "simulated", "--allow-simulated",
            "--log-level", os.environ.get("SHARDGUARD_NODE_LOG", "WARNING")]  # fmt: skip


def start_node(directory: Path, node_id: str, *, wrap: Sequence[str] | None = None) -> int:
    """(Re)start one node of the cluster with its existing state; returns its PID.

    ``wrap`` is a command prefix the node is started under, e.g. ``["nsenter", "--mount",
    "--target", PID, "--"]`` to run it in another mount namespace (the disk-fault tests put its
    state directory on a tmpfs there). The prefix must end by exec'ing the node, so that the
    recorded PID is the node's. ``None`` reuses the prefix recorded in ``cluster.json`` for
    this node (none if it never had one); ``()`` starts it plainly."""
    cluster = Cluster.load(directory)
    entry = next(n for n in cluster["nodes"] if n["node_id"] == node_id)
    prefix = list(entry.get("wrap", ()) if wrap is None else wrap)
    argv = _node_argv(cluster["url"], entry["state"], node_id, prefix)
    proc = _spawn(argv, directory / f"{node_id}.log", node_env(entry["enroll_token"]))
    entry.pop("wrap", None)
    if prefix:
        entry["wrap"] = prefix
    entry["pid"] = proc.pid
    (directory / CLUSTER_FILE).write_text(json.dumps(cluster, indent=2) + "\n")
    return proc.pid


def restart_coordinator(directory: Path) -> int:
    """Start the coordinator again on the same database and port (after a crash)."""
    cluster = Cluster.load(directory)
    port = cluster["url"].rsplit(":", 1)[1]
    job_timeout = cluster["coordinator"].get("job_timeout")
    env = dict(os.environ, SHARDGUARD_BOOTSTRAP_TOKEN=cluster["token"])
    proc = _spawn(
        [sys.executable, "-P", "-m", "shardguard.coordinator.server", "run", "--db", str(directory / "coordinator.sqlite3"),
         "--port", port, "--log-level", "warning", *(["--job-timeout", str(job_timeout)] if job_timeout else [])],
        directory / "coordinator.log", env,
    )  # fmt: skip
    cluster["coordinator"]["pid"] = proc.pid
    (directory / CLUSTER_FILE).write_text(json.dumps(cluster, indent=2) + "\n")
    return proc.pid


def _pids(cluster: Cluster) -> list[int]:
    return [int(cluster["coordinator"]["pid"]), *(int(n["pid"]) for n in cluster["nodes"])]


def _alive(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def down(directory: Path, *, grace: float = 5.0) -> list[int]:
    """Stop the cluster's processes (SIGTERM, then SIGKILL after ``grace``); return the PIDs stopped."""
    cluster = Cluster.load(directory)
    ours = [p for p in _pids(cluster) if _alive(p, "shardguard")]
    for pid in ours:
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(_alive(p, "shardguard") for p in ours):
        time.sleep(0.1)
    for pid in ours:
        if _alive(pid, "shardguard"):
            os.kill(pid, signal.SIGKILL)
    (directory / CLUSTER_FILE).unlink()
    return ours


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="shardguard dev", description="A development cluster (simulated enclaves) on this machine.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start a coordinator and N nodes")
    u.add_argument("--nodes", type=int, default=3)
    u.add_argument("--port", type=int, default=0)
    for p in (u, sub.add_parser("down", help="stop them"), sub.add_parser("status", help="show them")):
        p.add_argument("--dir", type=Path, default=Path(".shardguard-dev"))
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            c = up(args.dir, args.nodes, port=args.port)
            print(json.dumps({"url": c["url"], "nodes": [n["node_id"] for n in c["nodes"]], "dir": str(args.dir)}))
            print(f"admin token in {args.dir / CLUSTER_FILE} (development only)", file=sys.stderr)
        elif args.cmd == "down":
            print(json.dumps({"stopped": down(args.dir)}))
        else:
            c = Cluster.load(args.dir)
            alive = {str(p): _alive(p, "shardguard") for p in _pids(c)}
            print(json.dumps({"url": c["url"], "processes": alive}))
    except (FileNotFoundError, RuntimeError) as e:
        print(f"shardguard dev: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
