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


@pytest.mark.parametrize("how", [["--allow-simulated"], ["--policy", "POLICY"]])
def test_a_hardware_node_refuses_to_admit_simulated_peers(
    tmp_path: Path, how: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the host chooses the command line unless the image measures it; with
    allow_simulated a hardware node unsealed its shares and admitted evidence anyone can make
    (the development root's key is public)."""

    class Snp:
        kind = "tsm-sev-snp"
        measurement = "ab" * 48

    monkeypatch.setattr(service, "open_platform", lambda *a, **k: Snp())
    policy = tmp_path / "policy.toml"
    policy.write_text("allow_simulated = true\nrequire_measurements = false\n")
    args = [str(policy) if a == "POLICY" else a for a in how]
    with pytest.raises(SystemExit) as e:
        service.main(["--coordinator", "http://127.0.0.1:9", "--state", str(tmp_path / "s"), *args])
    assert e.value.code == 2 and "allow_simulated on a tsm-sev-snp node" in capsys.readouterr().err
