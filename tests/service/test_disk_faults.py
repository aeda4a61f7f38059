"""A signer node whose state disk fills up, then turns read-only — real processes (issue 6).

node-1's state directory is a small tmpfs that exists only in a private mount namespace: a
holder process (``unshare --mount --propagation private``, then ``mount -t tmpfs``, then
``sleep``) owns it, and node-1 runs inside that namespace (``nsenter --mount --target
<holder>``, the ``wrap`` hook of :func:`shardguard.dev.up` / :func:`~shardguard.dev.start_node`),
so a restarted node-1 finds the same tmpfs and nothing is mounted where the test or the other
nodes run. The test reaches the tmpfs through ``/proc/<holder>/root`` and remounts it with
``nsenter``. The suite runs as root here and in CI: if the namespace or the mount cannot be
made, the tests FAIL (the keystore-level tests in ``tests/node/test_keystore_disk.py`` cover
the same write paths without processes).

For each fault — disk full (a filler file written until ENOSPC), then read-only (``mount -o
remount,ro``) — sign and refresh requests of an ed25519 and an ecdsa key that involve node-1
must end ``done`` or ``failed`` with a reason before their deadline (a failure reported by
node-1 itself, at once, naming DISK_FULL / READ_ONLY; the ENOSPC / EROFS is in its log); node-1
keeps running (or restarts cleanly); its keystore still loads every share at the epoch the
coordinator has, with nothing pending and no temp file left; a failed refresh leaves the old
epoch signing on every node; and once the disk is writable again the keys sign through node-1,
verified by PyNaCl + OpenSSL (ed25519) and OpenSSL + libsecp256k1 via coincurve (ecdsa);
node-1's audit entries of those signatures reach the coordinator (its mirroring thread survived
the fault) and its mirrored chain verifies. node-1 killed and restarted on a full disk runs or
exits with the reason in its log, never having registered, and starts cleanly on the same tmpfs
once there is room.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardguard import dev
from shardguard.client import Client, RequestFailed
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node.audit import verify_chain
from shardguard.node.keystore import TMP_PREFIX, TMP_SUFFIX, Keystore
from tests.service.imaged import imaged_cluster
from tests.service.test_cluster import NODES, check_signature, kill9, node_pid, restart, sign

JOB_TIMEOUT = 10.0
#: How long after its deadline a request may still show ``running`` (the coordinator's sweep
#: runs every second; a loaded CI machine gets some slack).
SWEEP_SLACK = 5.0
TMPFS_SIZE = 4 << 20
PAGE = 4096
FULL = "node-1"


@dataclasses.dataclass
class Namespace:
    """The holder of node-1's private mount namespace and the tmpfs mounted in it."""

    proc: subprocess.Popen[bytes]
    mountpoint: Path  # node-1's state directory, as the node sees it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def path(self, *parts: str) -> Path:
        """A path on the tmpfs, reachable from outside the namespace."""
        return Path(f"/proc/{self.pid}/root") / self.mountpoint.relative_to("/").joinpath(*parts)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "--mount", f"--target={self.pid}", "--", *argv], capture_output=True, text=True, check=False
        )

    def mount_options(self) -> list[str]:
        for line in Path(f"/proc/{self.pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields[4] == str(self.mountpoint):
                return fields[5].split(",")
        raise AssertionError(f"{self.mountpoint} is not a mount point in the holder's namespace")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Client, Namespace]]:
    d = tmp_path_factory.mktemp("diskfaults")
    state = d / FULL
    state.mkdir()
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool}(1) is needed to put {FULL}'s state on a tmpfs of its own (util-linux)")
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o "size=$1,mode=0700" tmpfs "$2" && echo mounted && exec sleep 3600',
         "sh", str(TMPFS_SIZE), str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stderr is not None
    if holder.stdout.readline().strip() != b"mounted":
        holder.kill()
        err = holder.stderr.read().decode(errors="replace").strip()
        pytest.fail(
            f"cannot make a private mount namespace with a tmpfs (`unshare --mount` + `mount -t tmpfs`): {err or 'no output'}"
            " — these tests need root or CAP_SYS_ADMIN and are never skipped"
        )
    ns = Namespace(holder, state)
    try:
        # The tmpfs is node-1's alone: not mounted in our namespace, mounted (rw, sized) in the holder's.
        assert not os.path.ismount(state)
        assert "rw" in ns.mount_options()
        assert os.statvfs(ns.path()).f_blocks * os.statvfs(ns.path()).f_frsize == TMPFS_SIZE
        wrap = ["nsenter", "--mount", f"--target={ns.pid}", "--"]
        # On a fixed copy of the code, as test_cluster.py does (restarts measure the same bytes).
        with imaged_cluster(d, 3, job_timeout=JOB_TIMEOUT, wrap={FULL: wrap}) as client:
            assert (ns.path("keystore") / "ks-manifest.sealed").exists()  # node-1 really keeps its state there
            assert not (state / "keystore").exists()
            yield d, client, ns
    finally:
        holder.kill()  # the namespace and its tmpfs go with it
        holder.wait()


@pytest.fixture(scope="module")
def keys(cluster: tuple[Path, Client, Namespace]) -> dict[str, dict[str, Any]]:
    _, client, _ = cluster
    out = {s: client.create_key(s, 2, NODES) for s in ("ed25519", "ecdsa")}
    for key in out.values():
        sign(client, key, [FULL, "node-2"])
    return out


# -- helpers ----------------------------------------------------------------------------------


def fill(ns: Namespace) -> Path:
    """Write page-sized chunks onto the tmpfs until the kernel says ENOSPC."""
    filler = ns.path("filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = b"\xaa" * PAGE
        for _ in range(TMPFS_SIZE // PAGE + 1):
            try:
                os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
        else:
            raise AssertionError("the filler never hit ENOSPC")
    finally:
        os.close(fd)
    assert os.statvfs(ns.path()).f_bavail == 0
    return filler


def submit(client: Client, keys: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """A sign of each key with node-1 among the signers, then a refresh of each (which queues
    behind the sign of its key)."""
    reqs = []
    for scheme, other in (("ecdsa", "node-2"), ("ed25519", "node-3")):
        key = keys[scheme]
        if scheme == "ecdsa":
            r = client.sign(key["key_id"], digest=os.urandom(32), signers=[FULL, other], wait=False)
        else:
            r = client.sign(key["key_id"], message=b"on a faulty disk", signers=[FULL, other], wait=False)
        reqs.append((f"sign {scheme}", r["request_id"]))
    for scheme in ("ecdsa", "ed25519"):
        reqs.append((f"refresh {scheme}", client.refresh(keys[scheme]["key_id"], wait=False)["request_id"]))
    return reqs


def settle(client: Client, reqs: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Every request ends — done, or failed with a reason — no later than its deadline (plus
    the sweep's slack)."""
    out = {}
    for what, rid in reqs:
        try:
            r = client.wait(rid, timeout=3 * JOB_TIMEOUT + 2 * SWEEP_SLACK)
        except RequestFailed as e:
            r = e.request
            assert e.reason and e.reason != "unknown", f"{what} failed without a reason: {r}"
        assert r["status"] in ("done", "failed")
        assert r["deadline"] and r["finished_at"], r
        late = (dt.datetime.fromisoformat(r["finished_at"]) - dt.datetime.fromisoformat(r["deadline"])).total_seconds()
        assert late <= SWEEP_SLACK, f"{what} ended {late:.1f} s after its deadline: {r}"
        out[what] = r
    return out


def reported_by_the_faulty_node(ended: dict[str, dict[str, Any]], want: str) -> None:
    """node-1 failed each request itself, at once, naming the disk fault — not a peer's
    timeout at the deadline that names no cause."""
    for what, r in ended.items():
        if r["status"] != "failed":
            continue
        err = r["error"] or {}
        assert err.get("reason") in (want, f"KEYSTORE_{want}") and err.get("party") == FULL, f"{what}: {err}"
        took = (dt.datetime.fromisoformat(r["finished_at"]) - dt.datetime.fromisoformat(r["started_at"])).total_seconds()
        assert took < JOB_TIMEOUT / 2, f"{what} took {took:.1f} s to fail"


def keystore_loads(ns: Namespace, scratch: Path, client: Client, keys: dict[str, dict[str, Any]]) -> None:
    """node-1's keystore, copied off the tmpfs as it is now (the running node holds its lock),
    opens with every record validated; every key is at the coordinator's epoch, none pending."""
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(ns.path(), scratch, ignore=shutil.ignore_patterns("filler"))
    leftovers = [n for n in os.listdir(scratch / "keystore") if n.startswith(TMP_PREFIX) and n.endswith(TMP_SUFFIX)]
    if leftovers:  # a write attempt caught in flight is removed by its writer at once; one left behind is not
        time.sleep(1.0)
        leftovers = [n for n in leftovers if ns.path("keystore", n).exists()]
    assert not leftovers, f"temp files left on the faulty disk: {leftovers}"
    with Keystore.open(scratch / "keystore", SimulatedPlatform(state_dir=scratch / "platform"), read_only=True) as ks:
        for key in keys.values():
            epoch = client.key(key["key_id"])["epoch"]
            status = ks.key_status(key["key_id"])
            assert (status.current, status.pending) == (epoch, ()), status
            share = ks.share(key["key_id"])
            assert share.public.public_key_bytes.hex() == key["public_key"]
    shutil.rmtree(scratch)


def node_log(d: Path) -> str:
    return (d / f"{FULL}.log").read_text(errors="replace")


def alive_or_restarted(d: Path, client: Client) -> None:
    pid = node_pid(d, FULL)
    if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
        return
    restart(d, client, FULL)  # through the recorded nsenter prefix: the same tmpfs


def after_the_fault(
    client: Client, keys: dict[str, dict[str, Any]], ended: dict[str, dict[str, Any]], epochs: dict[str, int]
) -> set[str]:
    """The old epoch signs on every node (a failed refresh changed nothing); returns the
    requests (jobs) node-1 signed in."""
    through_full = set()
    for scheme, key in keys.items():
        if ended[f"refresh {scheme}"]["status"] == "failed":
            assert client.key(key["key_id"])["epoch"] == epochs[scheme]  # the old epoch stays in use
        for signers in ([FULL, "node-2"], [FULL, "node-3"], ["node-2", "node-3"]):
            payload = os.urandom(32)
            if scheme == "ecdsa":
                req = client.sign_request(key["key_id"], digest=payload, signers=signers)
            else:
                req = client.sign_request(key["key_id"], message=payload, signers=signers)
            check_signature(key, req["result"], payload)
            if FULL in signers:
                through_full.add(req["request_id"])
    return through_full


def audit_mirrored(d: Path, client: Client, jobs: set[str]) -> None:
    """node-1 audited the signings it took part in after the fault (``signing``, durable before
    its shares left) and its mirroring thread (which met the fault too) delivered them: the
    mirrored chain verifies, without a gap."""
    assert "Exception in thread" not in node_log(d), "a thread of node-1 died"
    end = time.monotonic() + 15
    while True:
        records = client.audit(node=FULL, limit=1000)["entries"]
        bodies = verify_chain(records, {int(r["seq"]): bytes.fromhex(r["identity_public_key"]) for r in records})
        missing = jobs - {b.get("job") for b in bodies if b["event"] == "signing"}
        if not missing:
            assert [b["seq"] for b in bodies] == list(range(1, len(bodies) + 1)), "a gap in node-1's mirrored audit chain"
            return
        assert time.monotonic() < end, f"{len(missing)} audit entries of node-1 after the fault never reached the coordinator"
        time.sleep(0.5)


# -- the faults -------------------------------------------------------------------------------


def test_full_state_disk(cluster: tuple[Path, Client, Namespace], keys: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    d, client, ns = cluster
    epochs = {s: client.key(k["key_id"])["epoch"] for s, k in keys.items()}
    log_before = len(node_log(d))
    sign(client, keys["ed25519"], [FULL, "node-2"])  # leaves node-1 an audit entry to mirror as the disk fills
    filler = fill(ns)
    try:
        ended = settle(client, submit(client, keys))
        assert ended["sign ecdsa"]["status"] == "failed" or ended["sign ed25519"]["status"] == "failed", ended
        assert "No space left on device" in node_log(d)[log_before:], "node-1 never met the full disk"
        reported_by_the_faulty_node(ended, "DISK_FULL")
        assert os.statvfs(ns.path()).f_bavail == 0  # still full: nothing was freed by deleting state
        alive_or_restarted(d, client)
        keystore_loads(ns, tmp_path / "copy", client, keys)
    finally:
        filler.unlink()
    audit_mirrored(d, client, after_the_fault(client, keys, ended, epochs))


def test_read_only_state_disk(cluster: tuple[Path, Client, Namespace], keys: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    d, client, ns = cluster
    epochs = {s: client.key(k["key_id"])["epoch"] for s, k in keys.items()}
    log_before = len(node_log(d))
    # Three rounds (a child key: no pre-signature): its entry goes into the manifest. A one-step
    # signing's entry is a journal append, and the journal stays open for writing until it is
    # compacted: the remount would fail (EBUSY) for longer than this waits.
    sign(client, keys["ecdsa"], [FULL, "node-3"], path="m/0")
    end = time.monotonic() + 5
    while (r := ns.run("mount", "-o", "remount,ro", str(ns.mountpoint))).returncode != 0:
        # EBUSY while node-1 has a file open for writing (its audit mirror may be mid-write)
        assert "busy" in r.stderr.lower() and time.monotonic() < end, f"remount,ro failed: {r.stderr}"
        time.sleep(0.1)
    try:
        assert "ro" in ns.mount_options()
        probe = ns.run("sh", "-c", f"echo x > {ns.mountpoint}/probe")
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe  # as node-1 sees it
        ended = settle(client, submit(client, keys))
        assert ended["sign ecdsa"]["status"] == "failed" or ended["sign ed25519"]["status"] == "failed", ended
        assert "Read-only file system" in node_log(d)[log_before:], "node-1 never met the read-only disk"
        reported_by_the_faulty_node(ended, "READ_ONLY")
        alive_or_restarted(d, client)
        keystore_loads(ns, tmp_path / "copy", client, keys)
    finally:
        r = ns.run("mount", "-o", "remount,rw", str(ns.mountpoint))
        assert r.returncode == 0, f"remount,rw failed: {r.stderr}"
    assert "rw" in ns.mount_options()
    audit_mirrored(d, client, after_the_fault(client, keys, ended, epochs))


def test_restart_on_a_full_disk(cluster: tuple[Path, Client, Namespace], keys: dict[str, dict[str, Any]]) -> None:
    """node-1 is killed and started again while its disk is full: it runs, or it exits with
    its reason in the log *before* registering (no task is handed to a dead node); either way
    the restart after the disk has room again (through the recorded nsenter prefix, so on the
    same tmpfs) finds every share and signs."""
    d, client, ns = cluster
    kill9(node_pid(d, FULL))
    filler = fill(ns)
    try:
        log_before = len(node_log(d))
        before = _generation(client)
        pid = dev.start_node(d, FULL)
        end = time.monotonic() + 20
        while time.monotonic() < end and _generation(client) == before and _running(pid):
            time.sleep(0.2)
        time.sleep(1.0)  # a node that fails its first write after registering exits about now
        registered, exited = _generation(client) != before, not _running(pid)
        if exited:
            log = node_log(d)[log_before:]
            assert "No space left on device" in log, log
            assert not registered, "node-1 registered, then exited: the coordinator would hand tasks to a dead node"
        else:
            kill9(pid)
    finally:
        filler.unlink()
    restart(d, client, FULL)
    for key in keys.values():
        sign(client, key, [FULL, "node-3"])


def _generation(client: Client) -> Any:
    return next(n.get("generation") for n in client.nodes() if n["node_id"] == FULL)


def _running(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text().lower()
