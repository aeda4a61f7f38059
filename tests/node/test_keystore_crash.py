"""Crash safety of the keystore, with real process deaths.

* A forked child runs a scripted sequence of operations and dies (``os._exit``, no cleanup, no
  ``finally``) right before its N-th write system call (open, write, fsync, rename, unlink), for
  every N the sequence makes.
* Forked children run random operation sequences and are SIGKILLed after random delays, over and
  over on the same directory (so a kill also lands in the recovery of the previous one).

After each death the store is reopened: it must hold exactly the state before or after the
operation in flight (by a model of the sequence), never a half state, with no temp or orphan
file left, and must accept writes. A process death keeps the page cache; power loss (unflushed
data lost) is not simulated here — the fsync points that guard against it are the same ones
the deaths are injected at.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node import keystore as ks_module
from shardguard.node.keystore import Keystore, KeystoreReason
from tests.node.test_keystore import (
    FROST_A,
    FROST_B,
    FaultyOs,
    Model,
    Op,
    assert_clean,
    at,
    ecdsa_shares,
    observe,
    random_op,
    run_op,
)

DIED = 86


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform(state_dir=tmp_path_factory.mktemp("platform"))


@pytest.fixture
def crash_dir(tmp_path: Path) -> Iterator[Path]:
    """tmpfs (/dev/shm) when available: a process death keeps the page cache whatever the file
    system, so the outcome is the same as on disk, without hundreds of real fsyncs."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(dir=shm, prefix="sg-keystore-crash-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def spawn(directory: Path, platform: SimulatedPlatform, ops: Sequence[Op], *, die_at: int = 0) -> tuple[int, int]:
    """Fork a child that opens the store and runs ``ops``, writing one byte to the returned pipe
    after each completed operation; with ``die_at`` it ``os._exit``s right before its die_at-th
    write system call."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            os.close(r)
            if die_at:
                ks_module.os = FaultyOs(die_at, on_fault=lambda: os._exit(DIED))  # type: ignore[assignment]
            store = Keystore.open(directory, platform)
            for op in ops:
                run_op(store, op)
                os.write(w, b".")
            store.close()
            code = 0
        except BaseException:
            code = 4
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def completed(r: int) -> int:
    n = 0
    while chunk := os.read(r, 4096):
        n += len(chunk)
    os.close(r)
    return n


def models_of(start: Model, ops: Sequence[Op]) -> list[Model]:
    out = [start]
    for op in ops:
        new, outcome = out[-1].apply(op)
        assert not isinstance(outcome, KeystoreReason), op[:2]
        out.append(new)
    return out


def check_reopen(directory: Path, platform: SimulatedPlatform, models: list[Model], done: int) -> str:
    """The reopened store holds the state after ``done`` operations or after ``done + 1``."""
    with Keystore.open(directory, platform) as s:
        got = observe(s)
        assert_clean(s)
        before = models[done].observe()
        after = models[done + 1].observe() if done + 1 < len(models) else None
        assert got in (before, after), (done, got["counter"], before["counter"])
        s.put_state("alive", {"done": done})  # and it still takes writes
        return "old" if got == before else "new"


def scripted_ops() -> list[Op]:
    e = ecdsa_shares()[0]
    return [
        ("stage", "k1", FROST_A[0]),
        ("commit", "k1", 0),
        ("put", "identity", {"seed": "11" * 32}),
        ("stage", "k2", e),
        ("commit", "k2", 0),
        ("stage", "k1", at(FROST_A[0], 1)),  # refresh: stage …
        ("update", "k2", e.with_bans({3})),  # a ban meanwhile
        ("commit", "k1", 1),  # … commit (old epoch file deleted after the manifest)
        ("stage", "k2", at(e, 1)),
        ("abort", "k2", 1),  # an aborted refresh
        ("put", "identity", {"seed": "22" * 32}),
        ("put_inline", "audit", {"seq": 1, "pending": ["ab" * 40]}),  # in the manifest itself
        ("put_inline", "identity", {"seed": "33" * 32}),  # its record file goes
        ("put_inline", "audit", {"seq": 2, "pending": []}),
        ("put", "identity", {"seed": "44" * 32}),  # back to a record file
        ("del_state", "audit"),
        ("del_state", "identity"),
        ("stage", "k3", FROST_B[0]),
        ("commit", "k3", 0),
        ("journal", ["one"]),  # the journal: appends (the first creates its file) ...
        ("journal", ["two", "three" * 50]),
        ("put", "policy", {"v": 1}),  # ... a manifest write anchors them ...
        ("journal", ["four"]),
        ("compact", "audit", {"seq": 4, "pending": []}),  # ... a new generation, the old file goes
        ("journal", ["five"]),
        ("del_key", "k3"),
    ]


def test_death_at_every_write_syscall(crash_dir: Path, platform: SimulatedPlatform, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = crash_dir
    ops = scripted_ops()
    models = models_of(Model(), ops)
    counting = FaultyOs()
    monkeypatch.setattr(ks_module, "os", counting)
    with Keystore.open(tmp_path / "dry-run", platform) as s:
        for op in ops:
            run_op(s, op)
        assert observe(s) == models[-1].observe()
    monkeypatch.setattr(ks_module, "os", os)
    total = counting.calls
    # temp file: open, write, fsync, rename; directory fsyncs; deletions (an inline put: the
    # manifest's only)
    assert total > 7 * len(ops)
    seen = {"old": 0, "new": 0}
    for n in range(1, total + 2):
        d = tmp_path / f"die-{n}"
        pid, r = spawn(d, platform, ops, die_at=n)
        _, status = os.waitpid(pid, 0)
        done = completed(r)
        code = os.waitstatus_to_exitcode(status)
        assert code == (DIED if n <= total else 0), (n, code)
        seen[check_reopen(d, platform, models, done)] += 1
    # deaths landed both before and after commit points
    print(f"{total} write syscalls, {total + 1} deaths: reopened the old state {seen['old']}x, the new one {seen['new']}x")
    assert seen["old"] > len(ops) and seen["new"] > len(ops), seen


def test_sigkill_at_random_moments(crash_dir: Path, platform: SimulatedPlatform) -> None:
    tmp_path = crash_dir
    ecdsa_shares()
    rng = random.Random(0x5EED)
    d = tmp_path / "ks"
    Keystore.open(d, platform).close()
    rounds, mid_sequence = 40, 0
    started = time.monotonic()
    for _ in range(rounds):
        with Keystore.open(d, platform) as s:
            start = Model.of(s)
        op_rng = random.Random(rng.getrandbits(64))
        ops: list[Op] = []
        model = start
        for _ in range(150):
            op = random_op(model, op_rng)
            model = model.apply(op)[0]
            ops.append(op)
        models = models_of(start, ops)
        pid, r = spawn(d, platform, ops)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        done = completed(r)
        assert os.waitstatus_to_exitcode(status) in (-signal.SIGKILL, 0)
        mid_sequence += done < len(ops)
        check_reopen(d, platform, models, done)
    print(f"{rounds} SIGKILLs, {mid_sequence} in the middle of a sequence")
    assert mid_sequence >= rounds * 3 // 4
    assert time.monotonic() - started < 60
