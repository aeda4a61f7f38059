"""Coordinator server processes for tests: ``python -m shardguard.coordinator.server``."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .conftest import BOOT


class ServerProcess:
    def __init__(self, *args: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._log_file = log.open("wb")
        full_env = {**os.environ, "SHARDGUARD_BOOTSTRAP_TOKEN": BOOT, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shardguard.coordinator.server", *args],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=full_env,
        )
        self.url = ""

    def wait_ready(self, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        prefix = "shardguard coordinator listening on "
        if not line.startswith(prefix):
            self.stop()
            raise AssertionError(f"server did not start: {line!r}\n{self.log.read_text(errors='replace')[-3000:]}")
        self.url = line[len(prefix) :].strip()
        return self.url

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextlib.contextmanager
def servers(*arg_lists: list[str], tmp: Path) -> Iterator[list[ServerProcess]]:
    procs = [ServerProcess(*args, log=tmp / f"server-{i}.log") for i, args in enumerate(arg_lists)]
    try:
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.stop()
