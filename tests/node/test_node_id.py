"""The node id kept in the state directory (node/service.py ``main``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardguard.node import service


@pytest.mark.parametrize("content", [b"", b"\n", b"node-\x00\xff", b"x" * 500])
def test_a_damaged_node_id_file_stops_the_node_with_a_clear_error(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cut or garbled id must not bring the node back as another node (review finding: the
    file was written in place, without fsync)."""
    (tmp_path / "node-id").write_bytes(content)
    with pytest.raises(SystemExit) as e:
        service.main(["--coordinator", "http://127.0.0.1:9", "--state", str(tmp_path)])
    assert e.value.code == 2
    assert "holds no valid node id" in capsys.readouterr().err
    assert (tmp_path / "node-id").read_bytes() == content  # left for the operator to restore


def test_an_invalid_node_id_argument_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        service.main(["--coordinator", "http://127.0.0.1:9", "--state", str(tmp_path), "--node-id", "bad id/../x"])
    assert e.value.code == 2 and "not a valid node id" in capsys.readouterr().err
    assert not (tmp_path / "node-id").exists()
