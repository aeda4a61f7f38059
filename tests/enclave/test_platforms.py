"""Enclave platforms (ARCHITECTURE §5, specs/enclave-backends.md).

No enclave hardware exists here. What each test exercises is said in its docstring:
* "simulated" tests run the simulated backend end to end against the real Nitro verifier;
* "real samples" tests feed genuine hardware evidence (fixtures/attestation) through the
  backend's file protocol on a fake directory tree and verify the result with
  shardguard.attestation — the kernel/Gramine side is mimicked, the evidence is genuine;
* "byte layout" tests check request/response encodings against the spec; the ioctls
  themselves never run.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import hashlib
import itertools
import os
import shutil
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shardguard.attestation.dev_root import DEV_ROOT_NAME, DEV_ROOT_PEM, DEV_ROOT_SPKI_SHA256, DEV_ROOTS
from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.nitro import NITRO_ROOTS, parse_document, verify_nitro
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.sev_snp import verify_sev_snp
from shardguard.attestation.sgx import verify_sgx
from shardguard.attestation.tdx import verify_tdx
from shardguard.attestation.x509chain import spki_sha256
from shardguard.enclave import (
    DetectionError,
    DeviceError,
    Evidence,
    NotSupported,
    SealingError,
    SealingReason,
    UsageError,
    detect,
    open_platform,
    tsm,
)
from shardguard.enclave import nitro as nsm
from shardguard.enclave._dev_root_key import DEV_ROOT_KEY_PEM
from shardguard.enclave.gramine import GraminePlatform
from shardguard.enclave.platform import TSM_REPORT_DIR, iowr
from shardguard.enclave.simulated import BANNER, KEY_FILE, MODULE_ID, SimulatedPlatform, code_manifest
from tests.attestation.conftest import FIXTURES, expected_fields

UD = hashlib.sha512(b"shardguard test user_data").digest()
NOW = dt.datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=dt.UTC)


def counter_rng(seed: bytes = b"") -> Callable[[int], bytes]:
    """Deterministic test RNG (SHA-256 in counter mode)."""
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + next(counter).to_bytes(8, "big")).digest()
        return out[:n]

    return rng


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedPlatform:
    return SimulatedPlatform(state_dir=tmp_path / "state")


def fixture(rel: str) -> bytes:
    return (FIXTURES / rel).read_bytes()


def _day_after(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso) + dt.timedelta(days=1)


# == development root ==========================================================================


def test_dev_root_pin_matches_certificate_and_public_key() -> None:
    """Byte formats only: the embedded PEMs. The pin is the SPKI SHA-256 of the embedded root,
    the (public) private key belongs to it, and the pin is not among the production Nitro roots."""
    cert = x509.load_pem_x509_certificate(DEV_ROOT_PEM)
    key = serialization.load_pem_private_key(DEV_ROOT_KEY_PEM, password=None)
    assert spki_sha256(cert) == DEV_ROOT_SPKI_SHA256
    assert DEV_ROOTS == {DEV_ROOT_SPKI_SHA256: DEV_ROOT_NAME}
    assert key.public_key() == cert.public_key()
    assert DEV_ROOT_SPKI_SHA256 not in NITRO_ROOTS
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_before_utc.year == 2026 and cert.not_valid_after_utc.year == 2046


# == simulated: evidence ==========================================================================


def test_simulated_evidence_verifies_as_simulated(sim: SimulatedPlatform) -> None:
    """Simulated backend end to end, no hardware: its document verifies with verify_nitro only
    as simulated, user_data round-trips and PCR0 is the platform's measurement."""
    evidence = sim.attest(UD)
    assert evidence.platform == "nitro" and evidence.collateral == {}
    verified = verify_nitro(evidence.blob, simulated_roots=DEV_ROOTS)
    assert verified.simulated is True
    assert verified.report_data == UD
    assert verified.measurements["pcr0"] == sim.measurement
    assert verified.debug is False
    assert verified.fields["module_id"] == MODULE_ID
    assert verified.fields["root"] == DEV_ROOT_NAME
    assert verified.nonce is None and verified.public_key is None


def test_simulated_evidence_without_dev_root_is_untrusted(sim: SimulatedPlatform) -> None:
    """Simulated backend, no hardware: the default Nitro pins do not include the development root."""
    with pytest.raises(AttestationError) as e:
        verify_nitro(sim.attest(UD).blob)
    assert e.value.reason is AttestationReason.UNTRUSTED_ROOT


def test_policy_refuses_simulated_unless_allowed(sim: SimulatedPlatform) -> None:
    """Simulated backend, no hardware: VerificationPolicy(allow_simulated=False) refuses with
    SIMULATED; a development policy that allows it and pins this PCR0 accepts."""
    verified = verify_nitro(sim.attest(UD).blob, simulated_roots=DEV_ROOTS)
    now = verified.signing_time
    assert now is not None
    with pytest.raises(AttestationError) as e:
        VerificationPolicy(allow_simulated=False).check(verified, now=now)
    assert e.value.reason is AttestationReason.SIMULATED
    dev = VerificationPolicy(allow_simulated=True, measurements={"simulated": {"pcr0": (sim.measurement,)}})
    dev.check(verified, now=now)


def test_banner_is_printed_and_logged_at_every_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Simulated backend, no hardware: every construction prints the banner to stderr and logs it at WARNING."""
    for _ in range(3):
        SimulatedPlatform(state_dir=tmp_path)
    err = capsys.readouterr().err
    assert err.count(BANNER) == 3
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"].count(BANNER) == 3


def test_simulated_document_has_the_nitro_shape(tmp_path: Path) -> None:
    """Simulated backend, no hardware: the document follows the Nitro format of
    fixtures/attestation/README.md byte for byte where it is fixed (untagged COSE_Sign1, {1: -35},
    empty unprotected map, 96-byte signature, payload key order of genuine documents, explicit
    nulls), the leaf is a P-384 non-CA certificate valid for 3 hours around the timestamp."""
    platform = SimulatedPlatform(state_dir=tmp_path, clock=lambda: NOW, rng=counter_rng())
    document = platform.attest(UD).blob
    assert document[:6] == bytes.fromhex("8444a1013822")
    protected, unprotected, payload_bytes, signature = cbor2.loads(document)
    assert protected == bytes.fromhex("a1013822") and unprotected == {} and len(signature) == 96
    payload = cbor2.loads(payload_bytes)
    genuine = cbor2.loads(cbor2.loads(fixture("nitro/anjuna_prod_userdata_2023-09-21.cbor"))[2])
    assert list(payload) == list(genuine)
    assert payload["timestamp"] == 1795608000123
    assert payload["digest"] == "SHA384" and payload["nonce"] is None and payload["public_key"] is None
    assert sorted(payload["pcrs"]) == list(range(16)) and all(len(v) == 48 for v in payload["pcrs"].values())
    assert all(v == bytes(48) for i, v in payload["pcrs"].items() if i >= 2)
    assert payload["cabundle"] == [x509.load_pem_x509_certificate(DEV_ROOT_PEM).public_bytes(serialization.Encoding.DER)]
    leaf = x509.load_der_x509_certificate(payload["certificate"])
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_before_utc <= NOW <= leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=3)
    assert parse_document(document).user_data == UD


def test_simulated_attest_is_deterministic_with_injected_clock_and_rng(tmp_path: Path) -> None:
    """Simulated backend, no hardware: fixed clock and RNG give the same document (RFC 6979 signatures)."""
    a = SimulatedPlatform(state_dir=tmp_path / "a", clock=lambda: NOW, rng=counter_rng(b"x")).attest(UD)
    b = SimulatedPlatform(state_dir=tmp_path / "b", clock=lambda: NOW, rng=counter_rng(b"x")).attest(UD)
    c = SimulatedPlatform(state_dir=tmp_path / "c", clock=lambda: NOW, rng=counter_rng(b"y")).attest(UD)
    assert a == b and a != c


def test_old_simulated_document_still_verifies_but_is_stale(tmp_path: Path) -> None:
    """Simulated backend, no hardware: the chain is checked at the document's own time (a
    4-hour-old document verifies although its leaf expired), freshness is the policy's STALE."""
    then = dt.datetime.now(dt.UTC) - dt.timedelta(hours=4)
    platform = SimulatedPlatform(state_dir=tmp_path, clock=lambda: then)
    verified = verify_nitro(platform.attest(UD).blob, simulated_roots=DEV_ROOTS)
    policy = VerificationPolicy(allow_simulated=True, require_measurements=False)
    with pytest.raises(AttestationError) as e:
        policy.check(verified, now=dt.datetime.now(dt.UTC))
    assert e.value.reason is AttestationReason.STALE


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_user_data_must_be_exactly_64_bytes(sim: SimulatedPlatform, size: int) -> None:
    """Simulated backend, no hardware: every platform binds exactly 64 bytes (spec preamble)."""
    with pytest.raises(UsageError):
        sim.attest(bytes(size))


def test_pcr0_is_the_code_manifest_hash(tmp_path: Path) -> None:
    """Simulated backend, no hardware: PCR0 = SHA-384 of the sha384sum-style manifest of the
    package's .py files, sorted by path; changing one file changes it."""
    pkg = tmp_path / "src" / "shardguard"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_bytes(b"")
    (pkg / "sub" / "a.py").write_bytes(b"x = 1\n")
    (pkg / "data.txt").write_bytes(b"not code")
    manifest = code_manifest(pkg)
    empty, one = hashlib.sha384(b"").hexdigest(), hashlib.sha384(b"x = 1\n").hexdigest()
    assert manifest == f"{empty}  shardguard/__init__.py\n{one}  shardguard/sub/a.py\n".encode()
    platform = SimulatedPlatform(state_dir=tmp_path / "s", package_dir=pkg)
    assert platform.measurement == hashlib.sha384(manifest).hexdigest()
    (pkg / "sub" / "a.py").write_bytes(b"x = 2\n")
    assert SimulatedPlatform(state_dir=tmp_path / "s", package_dir=pkg).measurement != platform.measurement
    installed = SimulatedPlatform(state_dir=tmp_path / "s")
    assert installed.measurement == hashlib.sha384(code_manifest()).hexdigest()
    assert b"  shardguard/enclave/simulated.py\n" in code_manifest()


# == sealing =====================================================================================


def test_seal_round_trip_and_key_survives_restart(tmp_path: Path) -> None:
    """Simulated backend, no hardware: seal/unseal round trip; a new instance on the same
    state_dir (a restart) opens old blobs; the key file is 0600, starts with an INSECURE comment."""
    first = SimulatedPlatform(state_dir=tmp_path / "state")
    blob = first.seal(b"key share", label=b"share/1")
    assert first.unseal(blob, label=b"share/1") == b"key share"
    assert blob[0] == 1 and b"key share" not in blob
    assert first.seal(b"key share", label=b"share/1") != blob  # random nonce
    restarted = SimulatedPlatform(state_dir=tmp_path / "state")
    assert restarted.unseal(blob, label=b"share/1") == b"key share"
    key_file = tmp_path / "state" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    lines = key_file.read_bytes().split(b"\n")
    assert lines[0].startswith(b"# INSECURE") and len(bytes.fromhex(lines[1].decode())) == 32
    assert [p.name for p in (tmp_path / "state").iterdir()] == [KEY_FILE]  # no temp file left


def test_unseal_failures_are_sealing_errors(tmp_path: Path) -> None:
    """Simulated backend, no hardware: wrong label, any flipped byte, another key, truncation and
    an unknown version are all SealingError; authentication failures share one reason."""
    platform = SimulatedPlatform(state_dir=tmp_path / "a")
    blob = platform.seal(b"secret", label=b"L")
    with pytest.raises(SealingError) as e:
        platform.unseal(blob, label=b"M")
    assert e.value.reason is SealingReason.AUTHENTICATION and str(e.value) == SealingReason.AUTHENTICATION.value
    for i in range(3, len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(SealingError) as e:
            platform.unseal(bytes(tampered), label=b"L")
        assert e.value.reason is SealingReason.AUTHENTICATION
    with pytest.raises(SealingError) as e:
        SimulatedPlatform(state_dir=tmp_path / "b").unseal(blob, label=b"L")
    assert e.value.reason is SealingReason.AUTHENTICATION
    for bad, reason in [
        (b"", SealingReason.MALFORMED),
        (blob[:30], SealingReason.MALFORMED),
        (b"\x02" + blob[1:], SealingReason.VERSION),
        (blob[:1] + b"\x00\x05" + blob[3:], SealingReason.MALFORMED),  # context the simulated platform never writes
        (blob[:1] + b"\xff\xff" + blob[3:], SealingReason.MALFORMED),  # context longer than the blob
    ]:
        with pytest.raises(SealingError) as e:
            platform.unseal(bad, label=b"L")
        assert e.value.reason is reason


def test_corrupt_or_unreadable_key_file_is_a_sealing_error(tmp_path: Path) -> None:
    """Simulated backend, no hardware: a key file that is not "comment + 64 hex digits" is refused, never replaced."""
    (tmp_path / KEY_FILE).write_bytes(b"# INSECURE\nnot-hex\n")
    with pytest.raises(SealingError) as e:
        SimulatedPlatform(state_dir=tmp_path)
    assert e.value.reason is SealingReason.KEY
    assert (tmp_path / KEY_FILE).read_bytes() == b"# INSECURE\nnot-hex\n"
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SealingError):
        SimulatedPlatform(state_dir=tmp_path / "file")


# == detection ===================================================================================


def _tree(root: Path, files: dict[str, bytes | None]) -> Path:
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"dev/nsm": b""}, "nitro"),
        ({TSM_REPORT_DIR: None}, "tsm"),
        ({"dev/attestation/attestation_type": b"dcap", "dev/attestation/quote": b"q"}, "gramine"),
        ({"dev/nsm": b"", TSM_REPORT_DIR: None}, "nitro"),
    ],
)
def test_detect_on_fake_roots(tmp_path: Path, files: dict[str, bytes | None], expected: str) -> None:
    """Byte formats only (file-tree presence): detection order of spec §6 on fake roots."""
    assert detect(_tree(tmp_path, files)) == expected


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"dev/sev-guest": b""},
        {"dev/tdx_guest": b""},
        {"dev/attestation/keys/_sgx_mrenclave": bytes(16)},  # gramine-direct: only keys/
        {"dev/attestation/attestation_type": b"none", TSM_REPORT_DIR: None},
    ],
)
def test_detect_never_falls_back_to_simulated(tmp_path: Path, files: dict[str, bytes | None]) -> None:
    """Byte formats only: nothing usable (or Gramine without DCAP) raises DetectionError; auto never yields simulated."""
    root = _tree(tmp_path, files)
    with pytest.raises(DetectionError):
        detect(root)
    with pytest.raises(DetectionError):
        open_platform("auto", root=root, state_dir=tmp_path / "state")


def test_open_platform_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Simulated backend, no hardware: simulated only by name and with a state_dir; unknown names are usage errors."""
    assert open_platform("simulated", state_dir=tmp_path).kind == "simulated"
    assert BANNER in capsys.readouterr().err
    with pytest.raises(UsageError):
        open_platform("simulated")
    with pytest.raises(UsageError):
        open_platform("sgx", root=tmp_path)
    with pytest.raises(DeviceError):
        open_platform("nitro", root=tmp_path)  # no /dev/nsm under the fake root


def test_evidence_names_a_verifier_format() -> None:
    """Byte formats only: Evidence.platform must be one of the verifier formats and the blob non-empty."""
    assert Evidence("tdx", b"q").collateral == {}
    with pytest.raises(UsageError):
        Evidence("tsm-tdx", b"q")
    with pytest.raises(UsageError):
        Evidence("nitro", b"")


def test_ioctl_numbers() -> None:
    """Byte layout only (no ioctl runs): _IOWR numbers and struct sizes of spec §1.1, §3.1, §4.1."""
    assert nsm.NSM_IOCTL_RAW == 0xC0200A00
    assert tsm.SNP_GET_DERIVED_KEY == 0xC0205301
    assert iowr(ord("S"), 0, 32) == 0xC0205300 and iowr(ord("S"), 2, 32) == 0xC0205302
    assert iowr(ord("T"), 1, 1088) == 0xC4405401


# == Nitro: NSM messages ===========================================================================


def test_nsm_request_encodings_match_the_spec() -> None:
    """Byte layout only: the exact request bytes of spec §1.2."""
    attestation = nsm.encode_request(nsm.AttestationRequest(user_data=UD))
    expected = (
        b"\xa1\x6bAttestation\xa3\x69user_data\x58\x40" + UD + b"\x65nonce\xf6\x6apublic_key\xf6"
    )  # A1 6B "Attestation" A3 69 "user_data" 58 40 <64 B> 65 "nonce" F6 6A "public_key" F6
    assert attestation == expected
    assert nsm.encode_request(nsm.GetRandomRequest()) == bytes.fromhex("69 47 65 74 52 61 6E 64 6F 6D")
    assert nsm.encode_request(nsm.DescribeNsmRequest()) == b"\x6bDescribeNSM"
    assert nsm.encode_request(nsm.DescribePcrRequest(index=16)) == b"\xa1\x6bDescribePCR\xa1\x65index\x10"
    assert cbor2.loads(nsm.encode_request(nsm.AttestationRequest(public_key=b"k"))) == {
        "Attestation": {"user_data": None, "nonce": None, "public_key": b"k"}
    }


@pytest.mark.parametrize(
    "make",
    [
        lambda: nsm.AttestationRequest(user_data=bytes(513)),
        lambda: nsm.AttestationRequest(nonce=bytes(513)),
        lambda: nsm.AttestationRequest(public_key=b""),
        lambda: nsm.AttestationRequest(public_key=bytes(1025)),
        lambda: nsm.DescribePcrRequest(index=-1),
        lambda: nsm.DescribePcrRequest(index=1 << 16),
        lambda: nsm.DescribePcrRequest(index=True),
    ],
)
def test_nsm_requests_validate_their_fields(make: Callable[[], object]) -> None:
    """Byte layout only: requests outside the limits of spec §1.2 cannot be built."""
    with pytest.raises(ValueError):
        make()


def test_nsm_responses_decode() -> None:
    """Real samples + byte layout: hand-built responses of spec §1.2 (the Attestation one wraps a
    genuine Nitro document) decode to typed values and re-encode to the same bytes."""
    genuine = fixture("nitro/anjuna_prod_userdata_2023-09-21.cbor")
    att = nsm.decode_response(cbor2.dumps({"Attestation": {"document": genuine}}))
    assert att == nsm.AttestationResponse(document=genuine)
    raw = b"\xa1\x69GetRandom\xa1\x66random\x58\x20" + bytes(range(32))  # A1 69 "GetRandom" A1 66 "random" <bstr>
    assert nsm.decode_response(raw) == nsm.GetRandomResponse(random=bytes(range(32)))
    pcr = nsm.decode_response(cbor2.dumps({"DescribePCR": {"lock": True, "data": bytes(48)}}))
    assert pcr == nsm.DescribePcrResponse(lock=True, data=bytes(48))
    describe = {
        "version_major": 1,
        "version_minor": 0,
        "version_patch": 0,
        "module_id": "i-0123-enc0123",
        "max_pcrs": 32,
        "locked_pcrs": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        "digest": "SHA384",
    }
    decoded = nsm.decode_response(cbor2.dumps({"DescribeNSM": describe}))
    assert isinstance(decoded, nsm.DescribeNsmResponse) and decoded.locked_pcrs == tuple(range(16))


@pytest.mark.parametrize("code", list(nsm.NsmErrorCode))
def test_nsm_error_responses_raise_typed_errors(code: nsm.NsmErrorCode) -> None:
    """Byte layout only: {"Error": code} raises NsmError carrying the code."""
    with pytest.raises(nsm.NsmError) as e:
        nsm.decode_response(cbor2.dumps({"Error": code.value}))
    assert e.value.code is code


_GOOD = cbor2.dumps({"DescribePCR": {"lock": False, "data": bytes(48)}})
_DESCRIBE_NSM = cbor2.dumps(
    {
        "DescribeNSM": {
            "version_major": 1,
            "version_minor": 0,
            "version_patch": 0,
            "module_id": "m",
            "max_pcrs": 32,
            "locked_pcrs": [],
            "digest": "SHA384",
        }
    }
)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff", id="not-cbor"),
        pytest.param(_GOOD[:-1], id="truncated"),
        pytest.param(_GOOD + b"\x00", id="trailing"),
        pytest.param(bytes(nsm.MAX_RESPONSE + 1), id="oversize"),
        pytest.param(b"\xa2" + _GOOD[1:] + _GOOD[1:], id="duplicate-variant"),
        pytest.param(b"\xbf" + _GOOD[1:] + b"\xff", id="indefinite-map"),
        pytest.param(b"\xa1\x78\x0bDescribePCR" + _GOOD[13:], id="non-canonical-head"),
        pytest.param(b"\xd8\x18" + _GOOD, id="tagged"),
        pytest.param(_DESCRIBE_NSM.replace(b"\x68max_pcrs\x18\x20", b"\x68max_pcrs\xc2\x41\x20"), id="bignum-tag-for-int"),
        pytest.param(cbor2.dumps("LockPCR"), id="unit-answer"),
        pytest.param(cbor2.dumps({"LockPCRs": {}}), id="unknown-variant"),
        pytest.param(cbor2.dumps({"Error": "Nope"}), id="unknown-error-code"),
        pytest.param(cbor2.dumps({"Error": 3}), id="error-not-text"),
        pytest.param(cbor2.dumps([1, 2]), id="array"),
        pytest.param(cbor2.dumps({"A": {}, "B": {}}), id="two-variants"),
        pytest.param(cbor2.dumps({"DescribePCR": {"lock": 1, "data": bytes(48)}}), id="int-not-bool"),
        pytest.param(cbor2.dumps({"DescribePCR": {"lock": False, "data": bytes(32)}}), id="pcr-32-bytes"),
        pytest.param(cbor2.dumps({"DescribePCR": {"lock": False}}), id="missing-field"),
        pytest.param(cbor2.dumps({"DescribePCR": {"lock": False, "data": bytes(48), "x": 1}}), id="extra-field"),
        pytest.param(cbor2.dumps({"Attestation": {"document": "text"}}), id="document-text"),
        pytest.param(cbor2.dumps({"Attestation": {"document": b""}}), id="document-empty"),
        pytest.param(cbor2.dumps({"GetRandom": {"random": b""}}), id="random-empty"),
        pytest.param(cbor2.dumps({"Attestation": [b"doc"]}), id="body-not-map"),
    ],
)
def test_nsm_rejects_malformed_responses(data: bytes) -> None:
    """Byte layout only: every malformed or unexpected response is MalformedNsmResponse, nothing else."""
    assert isinstance(nsm.decode_response(_DESCRIBE_NSM), nsm.DescribeNsmResponse)
    with pytest.raises(nsm.MalformedNsmResponse):
        nsm.decode_response(data)


def test_nsm_raw_struct_layout() -> None:
    """Byte layout only: struct nsm_raw is two {u64 addr; u64 len} iovecs, request @0, response @0x10, 32 bytes."""
    raw = nsm._NsmRaw(nsm._Iovec(0x1111, 2), nsm._Iovec(0x2222, 0x3000))
    assert ctypes.sizeof(raw) == 32
    assert bytes(raw) == struct.pack("<QQQQ", 0x1111, 2, 0x2222, 0x3000)


class FakeNsm:
    """Answers encoded NSM requests like the device would, with documents from the simulated platform."""

    def __init__(self, sim: SimulatedPlatform, *, digest: str = "SHA384", document: bytes | None = None) -> None:
        self.sim = sim
        self.digest = digest
        self.document = document
        self.requests: list[Any] = []

    def __call__(self, request: bytes) -> bytes:
        msg = cbor2.loads(request)
        self.requests.append(msg)
        if msg == "DescribeNSM":
            body = {
                "version_major": 1,
                "version_minor": 0,
                "version_patch": 0,
                "module_id": "i-fake-enc",
                "max_pcrs": 32,
                "locked_pcrs": list(range(16)),
                "digest": self.digest,
            }
            return cbor2.dumps({"DescribeNSM": body})
        if msg == "GetRandom":
            return cbor2.dumps({"GetRandom": {"random": bytes(256)}})
        if "DescribePCR" in msg:
            return cbor2.dumps({"DescribePCR": {"lock": True, "data": self.sim.pcrs[msg["DescribePCR"]["index"]]}})
        if "Attestation" in msg:
            doc = self.document or self.sim.attest(msg["Attestation"]["user_data"]).blob
            return cbor2.dumps({"Attestation": {"document": doc}})
        return cbor2.dumps({"Error": "InvalidOperation"})


def test_nitro_platform_over_a_fake_nsm(sim: SimulatedPlatform) -> None:
    """Byte layout only for the device: the NSM is a function answering CBOR; the documents it
    returns come from the simulated platform and verify with verify_nitro. The ioctl never runs."""
    fake = FakeNsm(sim)
    platform = nsm.NitroPlatform(transport=fake)
    assert platform.kind == "nitro" and platform.measurement == sim.measurement
    evidence = platform.attest(UD)
    assert verify_nitro(evidence.blob, simulated_roots=DEV_ROOTS).report_data == UD
    assert fake.requests[:2] == ["DescribeNSM", {"DescribePCR": {"index": 0}}]
    assert fake.requests[2] == {"Attestation": {"user_data": UD, "nonce": None, "public_key": None}}
    assert platform.get_random() == bytes(256)


def test_nitro_platform_refuses_wrong_answers(sim: SimulatedPlatform) -> None:
    """Real samples + byte layout: a genuine Nitro document that does not carry our user_data,
    a non-SHA384 NSM and an Error answer are all typed errors."""
    genuine = fixture("nitro/anjuna_prod_userdata_2023-09-21.cbor")
    platform = nsm.NitroPlatform(transport=FakeNsm(sim, document=genuine))
    with pytest.raises(DeviceError, match="does not carry"):
        platform.attest(UD)
    assert platform.attestation_document(user_data=b"Hello World!\n") == genuine
    assert verify_nitro(genuine).fields["user_data"] == b"Hello World!\n".hex()
    with pytest.raises(DeviceError, match="SHA384"):
        nsm.NitroPlatform(transport=FakeNsm(sim, digest="SHA256"))
    with pytest.raises(nsm.NsmError) as e:
        nsm.NitroPlatform(transport=lambda _req: cbor2.dumps({"Error": "InternalError"}))
    assert e.value.code is nsm.NsmErrorCode.INTERNAL_ERROR


def test_nitro_sealing_needs_kms(sim: SimulatedPlatform) -> None:
    """Byte layout only: without a KMS client seal/unseal raise NotSupported citing spec §1.5; with a
    fake KMS the envelope (wrapped data key in the blob's context) round-trips. No KMS is reached."""
    plain = nsm.NitroPlatform(transport=FakeNsm(sim))
    with pytest.raises(NotSupported, match="KMS"):
        plain.seal(b"x", label=b"L")
    with pytest.raises(NotSupported, match="KMS"):
        plain.unseal(b"\x01\x00\x01k" + bytes(28), label=b"L")

    genuine_with_key = fixture("nitro/anjuna_prod_pubkey_2021-03-24.cbor")

    class FakeKms:
        def __init__(self) -> None:
            self.keys: dict[bytes, bytes] = {}
            self.recipients: list[bytes] = []

        def generate_data_key(self, attest: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
            self.recipients.append(attest(b"spki"))
            blob = b"wrapped-%d" % len(self.keys)
            self.keys[blob] = os.urandom(32)
            return blob, self.keys[blob]

        def decrypt(self, ciphertext_blob: bytes, attest: Callable[[bytes], bytes]) -> bytes:
            self.recipients.append(attest(b"spki"))
            return self.keys[ciphertext_blob]

    kms = FakeKms()
    platform = nsm.NitroPlatform(transport=FakeNsm(sim, document=genuine_with_key), kms=kms)
    blob = platform.seal(b"share", label=b"L")
    assert b"wrapped-0" in blob
    assert platform.unseal(blob, label=b"L") == b"share"
    assert kms.recipients == [genuine_with_key]  # the key KMS made is kept for unsealing
    with pytest.raises(SealingError):
        platform.unseal(blob, label=b"other")
    # A restarted process (a new platform object) asks KMS to decrypt the data key once.
    again = nsm.NitroPlatform(transport=FakeNsm(sim, document=genuine_with_key), kms=kms)
    assert again.unseal(blob, label=b"L") == b"share" and again.unseal(blob, label=b"L") == b"share"
    assert kms.recipients == [genuine_with_key] * 2


def test_nitro_data_keys_seal_many_blobs_and_are_replaced(sim: SimulatedPlatform, monkeypatch: pytest.MonkeyPatch) -> None:
    """One GenerateDataKey seals many blobs (each with its own nonce), until DATA_KEY_USES seals
    or DATA_KEY_SECONDS; unsealing asks KMS once per data key it does not hold."""
    calls: list[str] = []
    keys: dict[bytes, bytes] = {}

    class CountingKms:
        def generate_data_key(self, attest: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
            calls.append("generate")
            blob = b"wrapped-%d" % len(keys)
            keys[blob] = os.urandom(32)
            return blob, keys[blob]

        def decrypt(self, ciphertext_blob: bytes, attest: Callable[[bytes], bytes]) -> bytes:
            calls.append("decrypt")
            return keys[ciphertext_blob]

    monkeypatch.setattr(nsm, "DATA_KEY_USES", 3)
    platform = nsm.NitroPlatform(transport=FakeNsm(sim), kms=CountingKms())
    blobs = [platform.seal(b"x%d" % i, label=b"L") for i in range(7)]
    assert calls == ["generate"] * 3  # 3 + 3 + 1 seals
    assert len(set(blobs)) == 7  # one key, fresh nonces
    clock = [1000.0]
    monkeypatch.setattr(nsm.time, "monotonic", lambda: clock[0])
    platform = nsm.NitroPlatform(transport=FakeNsm(sim), kms=CountingKms())
    platform.seal(b"a", label=b"L")
    clock[0] += nsm.DATA_KEY_SECONDS
    platform.seal(b"b", label=b"L")
    assert calls == ["generate"] * 5
    calls.clear()
    restarted = nsm.NitroPlatform(transport=FakeNsm(sim), kms=CountingKms())
    assert [restarted.unseal(b, label=b"L") for b in blobs] == [b"x%d" % i for i in range(7)]
    assert calls == ["decrypt"] * 3  # one per data key


# == TSM (configfs) ================================================================================


class FakeTsmKernel(tsm.ConfigfsOps):
    """Mimics configfs-tsm (spec §2, §7) on a plain directory: mkdir creates the attributes,
    writes to inblob/privlevel bump generation, inblob takes exactly 64 bytes, outblob holds
    the recorded evidence, rmdir removes the entry."""

    def __init__(self, provider: str, outblob: bytes, *, auxblob: bytes | None = None, privlevel_floor: int | None = None):
        self.provider = provider
        self.outblob = outblob
        self.auxblob = auxblob
        self.privlevel_floor = privlevel_floor
        self.writes: list[tuple[str, bytes]] = []
        self.entries: list[Path] = []

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        self.entries.append(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "inblob").write_bytes(b"")
        (path / "outblob").write_bytes(b"")
        if self.auxblob is not None:
            (path / "auxblob").write_bytes(b"")
        if self.privlevel_floor is not None:
            (path / "privlevel_floor").write_text(f"{self.privlevel_floor}\n")
            (path / "privlevel").write_text("0\n")

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)

    def write(self, path: Path, data: bytes) -> None:
        if path.name == "inblob" and len(data) != 64:
            raise OSError(errno.EINVAL, "Invalid argument")
        super().write(path, data)
        self.writes.append((path.name, data))
        generation = path.parent / "generation"
        generation.write_text(f"{int(generation.read_text()) + 1}\n")
        if path.name == "inblob":
            (path.parent / "outblob").write_bytes(self.outblob)
            if self.auxblob is not None:
                (path.parent / "auxblob").write_bytes(self.auxblob)


@pytest.fixture
def tsm_root(tmp_path: Path) -> Path:
    (tmp_path / TSM_REPORT_DIR).mkdir(parents=True)
    return tmp_path


def _report_dir_is_empty(root: Path) -> bool:
    return not any((root / TSM_REPORT_DIR).iterdir())


_TDX = expected_fields()["tdx"]
_TDX_QUOTES = [
    ("dcapqvl_tdx10_v4_quote.bin", None),
    ("dcapqvl_tdx15_v5_quote_outdated.bin", None),
    ("gotdxguest_gcp_cos113_v4_quote_padded.dat", None),
    ("trustee_tdx10_v4_quote_4.dat", None),
    ("trustee_tdx10_v4_quote_6.dat", None),
    ("gotdxguest_spr_e4_v4_quote_plus_trailer.dat", 4935),  # the repo's 39-byte ASCII trailer is not kernel output
]


@pytest.mark.parametrize(("name", "length"), _TDX_QUOTES, ids=[n for n, _ in _TDX_QUOTES])
def test_tsm_tdx_flow_with_real_quotes(tsm_root: Path, name: str, length: int | None) -> None:
    """Real samples: a genuine TDX quote served as outblob by a fake configfs-tsm tree; the
    platform writes inblob, checks generation, removes its entry, and the evidence verifies with
    verify_tdx (no collateral: TCB "Unknown"). The kernel side is mimicked; no TDX hardware."""
    quote = fixture(f"tdx/{name}")[:length]
    body = _TDX[name]["body"]
    user_data = bytes.fromhex(body["report_data"])
    kernel = FakeTsmKernel("tdx_guest", quote)
    platform = tsm.TsmPlatform(root=tsm_root, ops=kernel)
    assert platform.kind == "tsm-tdx"
    evidence = platform.attest(user_data)
    assert evidence == Evidence("tdx", quote)
    assert kernel.writes == [("inblob", user_data)]
    assert _report_dir_is_empty(tsm_root)
    verified = verify_tdx(evidence.blob, at=_day_after(_TDX[name]["pck_chain_valid_window"][0]))
    assert verified.report_data == user_data
    assert verified.measurements["mrtd"] == body["mr_td"] == platform.measurement
    assert verified.debug is (name == "trustee_tdx10_v4_quote_4.dat")


def test_tsm_tdx_evidence_verifies_with_collateral(tsm_root: Path) -> None:
    """Real samples: the dcap-qvl TDX quote through the fake configfs tree, verified with its
    genuine collateral inside the collateral window → UpToDate. No TDX hardware."""
    from shardguard.attestation.dcap import load_collateral

    quote = fixture("tdx/dcapqvl_tdx10_v4_quote.bin")
    user_data = bytes.fromhex(_TDX["dcapqvl_tdx10_v4_quote.bin"]["body"]["report_data"])
    evidence = tsm.TsmPlatform(root=tsm_root, ops=FakeTsmKernel("tdx_guest", quote)).attest(user_data)
    collateral = load_collateral(fixture("tdx/dcapqvl_tdx10_v4_collateral.json"))
    verified = verify_tdx(evidence.blob, collateral=collateral, at=dt.datetime(2025, 7, 1, tzinfo=dt.UTC))
    assert verified.tcb_status == "UpToDate"


_SNP = expected_fields()["sev-snp"]
_SNP_REPORTS = sorted(p.name for p in (FIXTURES / "sev-snp").glob("*_report.bin"))
_VCEK_GUID = bytes.fromhex("63da758de6644564adc5f4b93be8accd")


def _cert_table(der: bytes) -> bytes:
    """A one-certificate GHCB table (spec §3.4): entries {GUID, u32 offset, u32 length}, zero entry, blobs."""
    offset = 2 * 24
    return _VCEK_GUID + struct.pack("<II", offset, len(der)) + bytes(24) + der


def _signer(name: str) -> bytes:
    return fixture(f"sev-snp/{_SNP[name]['signer_cert']}")


@pytest.mark.parametrize("name", _SNP_REPORTS)
def test_tsm_snp_flow_with_real_reports(tsm_root: Path, name: str) -> None:
    """Real samples: a genuine SEV-SNP report served as outblob by a fake configfs-tsm tree
    (auxblob = a certificate table built here around the genuine VCEK/VLEK, spec §3.4 layout);
    reports at VMPL 1 get privlevel_floor 1 and the platform must write privlevel first. The
    evidence verifies with verify_sev_snp. The kernel side is mimicked; no SNP hardware."""
    report = fixture(f"sev-snp/{name}")
    expected = _SNP[name]
    user_data = bytes.fromhex(expected["report_data"])
    floor = expected["vmpl"] or None
    table = _cert_table(_signer(name))
    kernel = FakeTsmKernel("sev_guest", report, auxblob=table, privlevel_floor=floor)
    platform = tsm.TsmPlatform(root=tsm_root, ops=kernel)
    assert platform.kind == "tsm-sev-snp"
    evidence = platform.attest(user_data)
    assert evidence == Evidence("sev-snp", report, {"auxblob": table})
    expected_writes = [("privlevel", f"{floor}\n".encode())] if floor else []
    assert kernel.writes == [*expected_writes, ("inblob", user_data)]
    assert _report_dir_is_empty(tsm_root)
    verified = verify_sev_snp(evidence.blob, signer_cert=_signer(name), at=_day_after(expected["signer_valid_from"]))
    assert verified.report_data == user_data
    assert verified.measurements["measurement"] == expected["measurement"] == platform.measurement


def test_tsm_detects_a_concurrent_writer(tsm_root: Path) -> None:
    """Byte formats + real sample: a fake kernel whose generation moves while outblob is read
    (another writer) makes attest fail with GenerationMismatch; the entry is still removed."""

    class Racy(FakeTsmKernel):
        def read(self, path: Path) -> bytes:
            data = super().read(path)
            if path.name == "outblob":
                (path.parent / "generation").write_text("7\n")
            return data

    report = fixture("sev-snp/gosevguest_milan_v2_report.bin")
    platform = tsm.TsmPlatform(root=tsm_root, ops=Racy("sev_guest", report))
    with pytest.raises(tsm.GenerationMismatch) as e:
        platform.attest(bytes.fromhex(_SNP["gosevguest_milan_v2_report.bin"]["report_data"]))
    assert (e.value.expected, e.value.got) == (1, 7)
    assert _report_dir_is_empty(tsm_root)


def test_tsm_refuses_a_report_without_our_user_data(tsm_root: Path) -> None:
    """Real sample: the genuine report carries other report_data than written (a stale or raced
    outblob) → DeviceError before anything leaves the node. No SNP hardware."""
    platform = tsm.TsmPlatform(root=tsm_root, ops=FakeTsmKernel("sev_guest", fixture("sev-snp/trustee_milan_v2_report.bin")))
    with pytest.raises(DeviceError, match="user_data"):
        platform.attest(UD)
    with pytest.raises(UsageError):
        platform.attest(bytes(63))
    assert _report_dir_is_empty(tsm_root)


def test_tsm_retries_ebusy_then_gives_up(tsm_root: Path) -> None:
    """Byte formats only: EBUSY on outblob is retried (spec §2: a TDX quote in flight) with the
    injected sleep; persistent EBUSY becomes a DeviceError carrying errno."""
    quote = fixture("tdx/gotdxguest_gcp_cos113_v4_quote_padded.dat")

    class Busy(FakeTsmKernel):
        busy = 2

        def read(self, path: Path) -> bytes:
            if path.name == "outblob" and self.busy:
                self.busy -= 1
                raise OSError(errno.EBUSY, "Device or resource busy")
            return super().read(path)

    sleeps: list[float] = []
    kernel = Busy("tdx_guest", quote)
    platform = tsm.TsmPlatform(root=tsm_root, ops=kernel, sleep=sleeps.append, busy_wait=0.5)
    assert platform.attest(bytes(64)).blob == quote
    assert sleeps == [0.5, 0.5]
    kernel.busy = 10
    with pytest.raises(DeviceError) as e:
        platform.attest(bytes(64))
    assert e.value.errno == errno.EBUSY


def test_tsm_refuses_other_providers_and_missing_configfs(tmp_path: Path, tsm_root: Path) -> None:
    """Byte formats only: provider arm_cca_guest is NotSupported; no report directory is a DeviceError."""
    with pytest.raises(NotSupported, match="arm_cca_guest"):
        tsm.TsmPlatform(root=tsm_root, ops=FakeTsmKernel("arm_cca_guest", b""))
    assert _report_dir_is_empty(tsm_root)
    with pytest.raises(DeviceError):
        tsm.TsmPlatform(root=tmp_path / "nothing")


def test_tdx_has_no_sealing_key(tsm_root: Path) -> None:
    """Byte formats only: TDX seal/unseal raise NotSupported (spec §4.1)."""
    platform = tsm.TsmPlatform(root=tsm_root, ops=FakeTsmKernel("tdx_guest", b"q"))
    with pytest.raises(NotSupported, match="TDX"):
        platform.seal(b"x", label=b"L")


# == SEV-SNP derived keys (byte layouts) ============================================================


def test_snp_derived_key_request_layout() -> None:
    """Byte layout only (spec §3.1): snp_derived_key_req is 32 bytes: u32 root_key_select @0,
    u32 rsvd @4, u64 guest_field_select @8, u32 vmpl @0x10, u32 guest_svn @0x14, u64 tcb_version @0x18."""
    req = tsm.DerivedKeyRequest(
        root_key_select=1,
        guest_field_select=tsm.GuestField.MEASUREMENT | tsm.GuestField.TCB_VERSION,
        vmpl=2,
        guest_svn=0x01020304,
        tcb_version=0x0A00000000001754,
    )
    data = tsm.encode_derived_key_request(req)
    assert len(data) == 32
    assert data.hex() == "010000000000000028000000000000000200000004030201541700000000000a"
    default = tsm.encode_derived_key_request(tsm.DerivedKeyRequest())
    assert default == bytes(8) + b"\x09" + bytes(23)  # VCEK, MEASUREMENT|GUEST_POLICY, VMPL 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"root_key_select": 2},
        {"guest_field_select": 1 << 7},
        {"vmpl": 4},
        {"guest_svn": 1 << 32},
        {"tcb_version": -1},
        {"vmpl": True},
    ],
)
def test_snp_derived_key_request_validates(kwargs: dict[str, int]) -> None:
    """Byte layout only: out-of-range fields cannot be encoded."""
    with pytest.raises(ValueError):
        tsm.DerivedKeyRequest(**kwargs)


def test_snp_derived_key_response_and_ioctl_struct() -> None:
    """Byte layout only: snp_derived_key_resp (status @0, key @0x20, 64 B) and
    snp_guest_request_ioctl (u8 msg_version @0, u64 req @8, resp @16, exitinfo2 @24, 32 B)."""
    key = bytes(range(32))
    assert tsm.decode_derived_key_response(bytes(32) + key) == key
    with pytest.raises(DeviceError, match="0x16"):
        tsm.decode_derived_key_response(b"\x16" + bytes(31) + key)
    with pytest.raises(DeviceError):
        tsm.decode_derived_key_response(bytes(32) + key[:31])
    arg = tsm._SnpGuestRequestIoctl(1, 0x1111, 0x2222, 0x0000000200000016)
    assert bytes(arg) == b"\x01" + bytes(7) + struct.pack("<QQQ", 0x1111, 0x2222, 0x0000000200000016)
    assert tsm.split_exitinfo2(0x0000000200000016) == (0x16, 2)


def test_snp_sealing_with_a_fake_derived_key(tsm_root: Path) -> None:
    """Byte layout only: seal/unseal on SNP with the derived-key ioctl replaced by a function;
    the request it receives uses VMPL = privlevel_floor; another key (another measurement or chip)
    cannot unseal; without /dev/sev-guest sealing is NotSupported; a firmware error status is a
    SealingError. Key values are never hardware-derived here."""
    requests: list[bytes] = []

    def device(key: bytes) -> Callable[[bytes], bytes]:
        def answer(request: bytes) -> bytes:
            requests.append(request)
            return bytes(32) + key

        return answer

    report = fixture("sev-snp/teekit_gcp_milan_v5_report.bin")
    kernel = FakeTsmKernel("sev_guest", report, privlevel_floor=1)
    platform = tsm.TsmPlatform(root=tsm_root, ops=kernel, derived_key=device(b"k" * 32))
    blob = platform.seal(b"share", label=b"L")
    assert platform.unseal(blob, label=b"L") == b"share"
    assert requests == [bytes(8) + b"\x09" + bytes(7) + b"\x01" + bytes(15)]  # cached after the first call
    other = tsm.TsmPlatform(root=tsm_root, ops=kernel, derived_key=device(b"j" * 32))
    with pytest.raises(SealingError) as e:
        other.unseal(blob, label=b"L")
    assert e.value.reason is SealingReason.AUTHENTICATION
    with pytest.raises(NotSupported, match="sev-guest"):
        tsm.TsmPlatform(root=tsm_root, ops=kernel).seal(b"x", label=b"L")
    refusing = tsm.TsmPlatform(root=tsm_root, ops=kernel, derived_key=lambda _req: b"\x16" + bytes(63))
    with pytest.raises(SealingError) as e:
        refusing.seal(b"x", label=b"L")
    assert e.value.reason is SealingReason.KEY and "0x16" in str(e.value)


# == Gramine (SGX) =================================================================================

_SGX = expected_fields()["sgx"]
_SGX_QUOTES = sorted(_SGX)


def _gramine_tree(root: Path, quote: bytes, *, attestation_type: bytes = b"dcap", key: bytes | None = bytes(range(16))) -> Path:
    base = root / "dev" / "attestation"
    files: dict[str, bytes | None] = {
        "attestation_type": attestation_type,
        "user_report_data": bytes(64),
        "quote": quote,
        "report": quote[0x30 : 0x30 + 384] + bytes(48),  # sgx_report_t body as in the quote, key_id, MAC
    }
    if key is not None:
        files["keys/_sgx_mrenclave"] = key
    _tree(base, files)
    return root


@pytest.mark.parametrize("name", _SGX_QUOTES)
def test_gramine_flow_with_real_quotes(tmp_path: Path, name: str) -> None:
    """Real samples: a genuine SGX DCAP quote as Gramine's /dev/attestation/quote on a fake tree;
    the platform writes user_report_data (64 B), reads the quote, and the evidence verifies with
    verify_sgx. Gramine's pseudo-files are mimicked by plain files; no SGX hardware."""
    quote = fixture(f"sgx/{name}")
    user_data = quote[0x170:0x1B0]
    root = _gramine_tree(tmp_path, quote)
    assert detect(root) == "gramine"
    platform = open_platform("auto", root=root)
    assert isinstance(platform, GraminePlatform) and platform.kind == "gramine-sgx"
    evidence = platform.attest(user_data)
    assert evidence == Evidence("sgx", quote)
    assert (root / "dev/attestation/user_report_data").read_bytes() == user_data
    verified = verify_sgx(evidence.blob, at=_day_after(_SGX[name]["pck_chain_valid_window"][0]))
    assert verified.report_data == user_data
    assert verified.measurements["mrenclave"] == _SGX[name]["body"]["mr_enclave"] == platform.measurement


def test_gramine_refuses_a_quote_without_our_user_data(tmp_path: Path) -> None:
    """Real sample: the quote on disk carries other report data than written → DeviceError."""
    platform = GraminePlatform(root=_gramine_tree(tmp_path, fixture("sgx/dcapqvl_sgx_v3_quote.bin")))
    with pytest.raises(DeviceError, match="user_data"):
        platform.attest(UD)


@pytest.mark.parametrize("attestation_type", [b"none", b"epid"])
def test_gramine_without_dcap_is_not_supported(tmp_path: Path, attestation_type: bytes) -> None:
    """Byte formats only: attestation_type other than dcap cannot attest remotely (spec §5.1, §6)."""
    root = _gramine_tree(tmp_path, fixture("sgx/dcapqvl_sgx_v3_quote.bin"), attestation_type=attestation_type)
    with pytest.raises(NotSupported):
        GraminePlatform(root=root)


def test_gramine_sealing(tmp_path: Path) -> None:
    """Byte formats only: sealing from keys/_sgx_mrenclave (16 B) via HKDF; a restart opens the blob,
    another MRENCLAVE key cannot; a missing key is NotSupported, a wrong-sized one a SealingError.
    The key bytes are test values, not an SGX-derived key."""
    quote = fixture("sgx/dcapqvl_sgx_v3_quote.bin")
    root = _gramine_tree(tmp_path / "a", quote)
    blob = GraminePlatform(root=root).seal(b"share", label=b"L")
    assert GraminePlatform(root=root).unseal(blob, label=b"L") == b"share"
    other = GraminePlatform(root=_gramine_tree(tmp_path / "b", quote, key=bytes(16)))
    with pytest.raises(SealingError) as e:
        other.unseal(blob, label=b"L")
    assert e.value.reason is SealingReason.AUTHENTICATION
    with pytest.raises(NotSupported):
        GraminePlatform(root=_gramine_tree(tmp_path / "c", quote, key=None)).seal(b"x", label=b"L")
    with pytest.raises(SealingError) as e:
        GraminePlatform(root=_gramine_tree(tmp_path / "d", quote, key=bytes(32))).seal(b"x", label=b"L")
    assert e.value.reason is SealingReason.KEY
