"""bench/ab_service.py: alternating service benchmarks of several code revisions.

A real run needs a cluster per run and minutes; these check the spec parsing, the readings and
medians, the worktrees it makes and removes, and its loop end to end with a stand-in bench.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ab() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ab_service", ROOT / "bench" / "ab_service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ab_service"] = module
    spec.loader.exec_module(module)
    return module


def test_specs(ab: ModuleType) -> None:
    s = ab.parse_spec("HEAD~2:SHARDGUARD_A=1,B=x=y")
    assert (s.ref, s.env) == ("HEAD~2", {"SHARDGUARD_A": "1", "B": "x=y"})
    assert ab.parse_spec("/some/dir").env == {}
    for bad in (":A=1", "HEAD:A", "HEAD:1A=2", "HEAD:=2"):
        with pytest.raises(ValueError):
            ab.parse_spec(bad)


def test_readings_and_medians(ab: ModuleType) -> None:
    line = {"sequential_latency_ms": {"p50": 5.0}, "paced": {"latency_ms": {"p50": 6}}, "throughput_sig_per_s": "x"}
    assert ab.reading(line, ("sequential_latency_ms", "p50")) == 5.0
    assert ab.reading(line, ("paced", "latency_ms", "p50")) == 6.0
    assert ab.reading(line, ("throughput_sig_per_s",)) is None  # not a number
    assert ab.reading(line, ("paced", "nothing")) is None
    rows = dict(ab.summary({"a": [line, {"sequential_latency_ms": {"p50": 7.0}}], "b": []}))
    assert rows["one at a time p50 ms"] == [6.0, None]


def test_revisions_get_worktrees_that_are_removed(ab: ModuleType, tmp_path: Path) -> None:
    specs = [ab.parse_spec("HEAD"), ab.parse_spec(str(tmp_path))]
    with ab.trees(specs) as dirs:
        head = dirs["HEAD"]
        assert (head / "bench" / "bench_service.py").exists() and dirs[str(tmp_path)] == tmp_path.resolve()
    assert not head.exists()
    listed = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert str(head) not in listed


FAKE_BENCH = """
import json, os, sys
ok = os.environ.get("FAKE_FAIL") != "1"
print(json.dumps({"scheme": "ed25519", "errors": 0 if ok else 1, "verify_failures": 0, "inprocess_sign_ms": 1.0,
                  "sequential_latency_ms": {"p50": float(os.environ.get("FAKE_P50", "5"))}, "argv": sys.argv[1:]}))
"""


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench_service.py").write_text(FAKE_BENCH)
    return tmp_path


def test_runs_alternate_and_report(ab: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = _tree(tmp_path)
    rc = ab.main(["--runs", "2", "--bench-args", "--ed25519 7", f"{tree}:FAKE_P50=4", f"{tree}:FAKE_P50=6"])
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0
    assert [(o["spec"].rsplit("=", 1)[1], o["round"]) for o in out] == [("4", 1), ("6", 1), ("4", 2), ("6", 2)]
    assert [o["one at a time p50 ms"] for o in out] == [4.0, 6.0, 4.0, 6.0] and all(o["ok"] for o in out)


def test_a_failed_run_fails_the_comparison(ab: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = _tree(tmp_path)
    assert ab.main(["--runs", "1", f"{tree}:FAKE_FAIL=1", str(tree)]) == 1
    assert [json.loads(x)["ok"] for x in capsys.readouterr().out.splitlines()] == [False, True]
