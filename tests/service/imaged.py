"""A developer cluster whose nodes run from a fixed copy of the package, as an enclave runs a
fixed image: the simulated measurement hashes the code, so every restarted node must run
exactly the same bytes."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import shardguard
from shardguard import dev
from shardguard.client import Client


@contextlib.contextmanager
def imaged_cluster(d: Path, nodes: int, *, job_timeout: float, **up: Any) -> Iterator[Client]:
    """``dev.up`` in ``d`` (``up``: its other arguments) with the nodes on a copy of the
    package; a client; ``dev.down`` after."""
    image = d / "image"
    shutil.copytree(
        Path(shardguard.__file__).resolve().parent, image / "shardguard", ignore=shutil.ignore_patterns("__pycache__")
    )
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(image), *([old] if old else [])])
    try:
        c = dev.up(d, nodes, job_timeout=job_timeout, **up)
        client = Client(c["url"], c["token"])
        try:
            yield client
        finally:
            client.close()
            dev.down(d)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
