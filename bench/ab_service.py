#!/usr/bin/env python3
"""Compare code revisions through the service, alternating runs of ``bench_service.py``.

    python bench/ab_service.py [--runs 3] [--scheme ed25519|ecdsa] [--bench-args "..."] SPEC SPEC ...

A SPEC is a git revision (``c139e8f``, ``HEAD~2``) or a directory holding a ShardGuard tree,
optionally followed by ``:NAME=VALUE,NAME=VALUE`` environment variables for that run's
processes (``HEAD:SHARDGUARD_X=1``). A revision is checked out into a temporary worktree,
removed at the end. Each round runs every spec once, in the order given, so a host whose speed
drifts (shared 2-core machines do, by tens of per cent within minutes) drifts under all of them
alike; comparing a spec's runs to another's from the same rounds is the point.

Each run is that tree's own ``bench/bench_service.py`` with that tree on ``PYTHONPATH`` and
this interpreter (the checkout's ``.venv``): ``--ed25519 300 --sequential 30 --paced-seconds
10`` or ``--ecdsa 60 --sequential 20 --paced-seconds 8`` unless ``--bench-args`` says
otherwise. One JSON line per run on stdout (the spec, the round, the readings of issue 6's
goals, CPU per signature); a table of every spec's medians on stderr at the end. Exit status 1
if a run failed, a request failed or a signature did not verify.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARGS = {
    "ed25519": ["--ed25519", "300", "--sequential", "30", "--paced-seconds", "10"],
    "ecdsa": ["--ecdsa", "60", "--sequential", "20", "--paced-seconds", "8"],
}
#: (label, path into a bench_service JSON line) of what each run reports.
READINGS = [
    ("in-process ms", ("inprocess_sign_ms",)),
    ("one at a time p50 ms", ("sequential_latency_ms", "p50")),
    ("paced p50 ms", ("paced", "latency_ms", "p50")),
    ("paced p90 ms", ("paced", "latency_ms", "p90")),
    ("paced run p50 ms", ("paced", "request_run_ms", "p50")),
    ("throughput /s", ("throughput_sig_per_s",)),
    ("CPU coordinator ms", ("paced", "cpu_ms_per_signature", "coordinator")),
    ("CPU node-1 ms", ("paced", "cpu_ms_per_signature", "node-1")),
]


@dataclass
class Spec:
    text: str
    ref: str
    env: dict[str, str] = field(default_factory=dict)


def parse_spec(text: str) -> Spec:
    """``REV_OR_DIR[:NAME=VALUE,...]``."""
    ref, _, envs = text.partition(":")
    env: dict[str, str] = {}
    for item in filter(None, envs.split(",")):
        name, eq, value = item.partition("=")
        if not eq or not name.isidentifier():
            raise ValueError(f"{text!r}: {item!r} is not NAME=VALUE")
        env[name] = value
    if not ref:
        raise ValueError(f"{text!r}: no revision or directory")
    return Spec(text, ref, env)


def reading(line: dict[str, Any], path: Sequence[str]) -> float | None:
    v: Any = line
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return float(v) if isinstance(v, int | float) else None


def summary(results: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[float | None]]]:
    """Per reading, each spec's median over its runs (None when no run had it)."""
    rows = []
    for label, path in READINGS:
        medians: list[float | None] = []
        for lines in results.values():
            got = [v for v in (reading(x, path) for x in lines) if v is not None]
            medians.append(round(statistics.median(got), 2) if got else None)
        rows.append((label, medians))
    return rows


@contextlib.contextmanager
def trees(specs: Sequence[Spec]) -> Iterator[dict[str, Path]]:
    """A directory per spec: its own, or a temporary worktree of its revision."""
    out: dict[str, Path] = {}
    made: list[Path] = []
    try:
        for s in specs:
            if Path(s.ref).is_dir():
                out[s.text] = Path(s.ref).resolve()
                continue
            d = Path(tempfile.mkdtemp(prefix="shardguard-ab-"))
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(d), s.ref],
                           check=True, capture_output=True)  # fmt: skip
            made.append(d)
            out[s.text] = d
        yield out
    finally:
        for d in made:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(d)], capture_output=True)


def run_once(tree: Path, spec: Spec, bench_args: list[str], timeout: float) -> tuple[list[dict[str, Any]], str | None]:
    env = dict(os.environ, PYTHONPATH=str(tree), **spec.env)
    cmd = [sys.executable, str(tree / "bench" / "bench_service.py"), *bench_args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode or not lines:
        last = p.stderr.strip().splitlines()[-1:]
        return lines, f"exit status {p.returncode}: {last[0] if last else 'no output'}"
    return lines, None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("specs", nargs="+", metavar="SPEC", help="a git revision or a directory, [:NAME=VALUE,...]")
    ap.add_argument("--runs", type=int, default=3, help="rounds (each runs every spec once)")
    ap.add_argument("--scheme", choices=sorted(DEFAULT_ARGS), default="ed25519")
    ap.add_argument("--bench-args", default=None, help="arguments for bench_service.py instead of the defaults")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    args = ap.parse_args(argv)
    try:
        specs = [parse_spec(s) for s in args.specs]
    except ValueError as e:
        ap.error(str(e))
    if len({s.text for s in specs}) != len(specs):
        ap.error("a spec is named twice")
    bench_args = shlex.split(args.bench_args) if args.bench_args is not None else DEFAULT_ARGS[args.scheme]
    bench_args = [*bench_args, "--schemes", args.scheme]
    err = Console(stderr=True)
    results: dict[str, list[dict[str, Any]]] = {s.text: [] for s in specs}
    failed = False
    with trees(specs) as dirs:
        for r in range(args.runs):
            for s in specs:
                err.print(f"round {r + 1}/{args.runs}: {s.text}")
                lines, problem = run_once(dirs[s.text], s, bench_args, args.timeout)
                ok = problem is None and all(x.get("errors") == 0 and x.get("verify_failures") == 0 for x in lines)
                failed |= not ok
                for x in lines:
                    results[s.text].append(x)
                    out = {"spec": s.text, "round": r + 1, "scheme": x.get("scheme"), "ok": ok}
                    out.update({label: reading(x, path) for label, path in READINGS})
                    print(json.dumps(out), flush=True)
                if problem is not None:
                    err.print(f"  {s.text}: {problem}")
    table = Table(title=f"{args.scheme}: medians of {args.runs} alternating run(s)")
    table.add_column("reading")
    for s in specs:
        table.add_column(s.text, justify="right")
    for label, medians in summary(results):
        table.add_row(label, *("–" if m is None else f"{m:g}" for m in medians))
    err.print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
