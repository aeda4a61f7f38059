"""The DCAP verifier's fast paths decide exactly as the general code they shortcut.

Each fast path (issue 5: cold verification speed) accepts a subset of its inputs — the layouts
genuine Intel quotes and collateral use — and hands everything else to the general code. These
tests check, on the genuine samples and on mutations of them, that whenever a fast path answers,
its answer is the general code's (or cryptography's, which the general code calls):

* PEM chains: ``_pem_ders`` vs cryptography's PEM parser;
* names: ``_plain_name`` vs cryptography's ``Name`` decoding and RFC 4514 rendering;
* PCK SGX extensions: the whole-value pattern vs the TLV walker;
* certificate extensions: ``_intel_extensions`` (Intel's extension kinds and encodings, read
  from the DER) vs cryptography's decoding of every extension;
* TCB info / QE identity: the one-pass level checks vs the field-by-field ones;
* records built by ``_record`` vs the dataclasses' own constructors;
* CRL look-ups vs every revoked serial;
* the Intel root decoded at import vs the genuine chains' last certificate.
"""

from __future__ import annotations

import binascii
import copy
import dataclasses
import datetime as dt
import json
import random
import warnings
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from shardguard.attestation import dcap
from shardguard.attestation.errors import AttestationError, AttestationReason

from .conftest import fixture_bytes
from .test_dcap import AT, DCAPQVL_COLLATERAL, SAMPLES, TDX10, layout, platform_of, quote_bytes

R = AttestationReason


def _pck_chain_pem(name: str) -> bytes:
    q = quote_bytes(name)
    return q[slice(*layout(q).pem)]


def _collateral_docs() -> list[dict[str, Any]]:
    return [json.loads(fixture_bytes(path).decode()) for path in DCAPQVL_COLLATERAL.values()]


def _mutations(data: bytes, rng: random.Random, n: int, alphabet: bytes) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            pos, kind = rng.randrange(len(b)), rng.random()
            if kind < 0.5:
                b[pos] = rng.choice(alphabet) if rng.random() < 0.6 else rng.randrange(256)
            elif kind < 0.75:
                del b[pos : pos + rng.randint(1, 3)]
            else:
                b[pos:pos] = bytes([rng.choice(alphabet)])
        out.append(bytes(b))
    return out


# -- PEM ------------------------------------------------------------------------------------------------
def _cryptography_ders(pem: bytes) -> list[bytes] | None:
    """What the general path accepts: the block/filler check, then cryptography's PEM parser."""
    if not dcap._PEM_FILLER.fullmatch(dcap._PEM_BLOCK.sub(b"", pem)):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(pem)]
    except (ValueError, x509.InvalidVersion):
        return None


def _parses(der: bytes) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion):
        return False
    return True


def test_genuine_chains_take_the_pem_fast_path_and_end_with_the_root_decoded_at_import() -> None:
    for name in SAMPLES:
        pem = _pck_chain_pem(name)
        ders = dcap._pem_ders(pem)
        assert ders is not None and ders == _cryptography_ders(pem), name
        assert ders[-1] is dcap._INTEL_ROOT_DER  # recognised by its PEM body, not decoded
    assert fixture_bytes("sgx/intel_sgx_root_ca.der") == dcap._INTEL_ROOT_DER
    root, spki = dcap._KNOWN_ROOTS[dcap._INTEL_ROOT_DER]
    assert root.self_signed and dcap.INTEL_ROOTS[spki] == "intel-sgx-root-ca"


def test_pem_fast_path_agrees_with_cryptography_on_mutations() -> None:
    rng = random.Random(5)
    alphabet = b"AZaz09+/=\n\r \x00-BEGINDCRTFA"
    pems = [_pck_chain_pem(name) for name in (TDX10, "sgx/dcapqvl_sgx_v3_quote.bin")]
    pems.append(pems[0].replace(b"\n", b"\r\n"))
    taken = 0
    for pem in pems:
        for mutated in _mutations(pem, rng, 1500, alphabet):
            ders = dcap._pem_ders(mutated)
            if ders is not None:  # the fast path answered: cryptography must agree exactly
                taken += 1
                if not all(_parses(der) for der in ders):
                    ders = None  # the fast path's caller then refuses it as MALFORMED, as cryptography does
                assert ders == _cryptography_ders(mutated), mutated
    assert taken > 200  # many mutations of base64 text keep the layout


def test_64_column_bodies_have_no_empty_line() -> None:
    rng = random.Random(5)
    bodies = [b"\n", b"\n\n", b"\n" + b"A" * 64 + b"\n\n", b"\n" + b"A" * 64 + b"\n" + b"A" * 64 + b"\n"]
    for n in range(0, 300):
        text = b"A" * n
        good = b"\n" + b"".join(text[i : i + 64] + b"\n" for i in range(0, n, 64))
        bodies.append(good)
        for _ in range(20):
            b = bytearray(good)
            for _ in range(rng.randint(1, 2)):
                pos = rng.randrange(len(b) + 1)
                if rng.random() < 0.5:
                    b[pos:pos] = b"\n"
                else:
                    del b[pos : pos + 1]
            bodies.append(bytes(b))
    for body in bodies:
        if body[:1] == b"\n" and body[-1:] == b"\n" and dcap._pem_64_columns(body):
            assert b"\n\n" not in body, body
            if body != b"\n":
                lines = body[1:-1].split(b"\n")
                assert all(len(x) == 64 for x in lines[:-1]) and 0 < len(lines[-1]) <= 64, body


def test_base64_canonical_is_exactly_a_round_trip() -> None:
    rng = random.Random(6)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n"
    for _ in range(20000):
        if rng.random() < 0.5:
            s = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        else:
            b = bytearray(binascii.b2a_base64(rng.randbytes(rng.randint(0, 10)), newline=False))
            if b and rng.random() < 0.7:
                b[rng.randrange(len(b))] = rng.choice(alphabet)
            s = bytes(b)
        der: bytes | None
        try:
            der = binascii.a2b_base64(s)
            if not s or binascii.b2a_base64(der, newline=False) != s:
                der = None
        except binascii.Error:
            der = None
        assert dcap._b64_canonical(s) == der, s


# -- names ------------------------------------------------------------------------------------------------
def _cryptography_name(raw: bytes) -> tuple[str, str] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            name = x509.Name.from_bytes(raw)
            cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
            return name.rfc4514_string(), str(cns[0].value) if cns else ""
    except ValueError:
        return None


def test_plain_names_render_as_cryptography_renders_them() -> None:
    names = []
    for name in SAMPLES:
        for c in x509.load_pem_x509_certificates(_pck_chain_pem(name).rstrip(b"\x00")):
            names += [c.subject.public_bytes(), c.issuer.public_bytes()]
    special = [
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, v), x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]).public_bytes()
        for v in ("a b", " lead", "trail ", "#x", "a,b", "a+b", 'q"', "é", "x" * 64, "semi;colon", "eq=ual")
    ]
    for raw in set(names + special):
        got = dcap._plain_name(raw)
        assert got is None or got == _cryptography_name(raw), raw
    assert all(dcap._plain_name(raw) is not None for raw in names)  # Intel's names are plain
    rng = random.Random(7)
    alphabet = bytes([0x20, 0x23, 0x2C, 0x2B, 0x5C, 0x22, 0x3D, 0x00, 0x7F, 0x80, 0xC3, 0x41, 0x31, 0x30, 0x06, 0x0C, 0x13, 0x7B])
    taken = 0
    for raw in names[:6]:
        for mutated in _mutations(raw, rng, 3000, alphabet):
            got = dcap._plain_name(mutated)
            if got is not None:
                taken += 1
                assert got == _cryptography_name(mutated), mutated.hex()
    assert taken > 300


# -- PCK SGX extensions ------------------------------------------------------------------------------
def _sgx_extension(name: str) -> bytes:
    leaf = x509.load_pem_x509_certificates(_pck_chain_pem(name).rstrip(b"\x00"))[0]
    value: bytes = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.840.113741.1.13.1")).value.value  # type: ignore[attr-defined]
    return value


def _general_sgx_extension(value: bytes, monkeypatch: pytest.MonkeyPatch) -> dcap.PckInfo | None:
    with monkeypatch.context() as m:
        m.setattr(dcap, "_decode_sgx_extension_fast", lambda v: None)
        m.setattr(dcap, "_TCB_ENTRY", type("NoMatch", (), {"fullmatch": staticmethod(lambda *a: None)}))
        try:
            return dcap._decode_sgx_extension(value)
        except ValueError:
            return None


def test_sgx_extension_fast_path_agrees_with_the_tlv_walker(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {_sgx_extension(name) for name in SAMPLES}
    for value in values:  # both Processor-CA (5 entries) and Platform-CA (7 entries) layouts
        fast = dcap._decode_sgx_extension_fast(value)
        assert fast is not None and fast == _general_sgx_extension(value, monkeypatch)
    rng = random.Random(8)
    taken = 0
    for value in values:
        for mutated in _mutations(value, rng, 1500, bytes([0x00, 0x01, 0x02, 0x04, 0x0A, 0x30, 0x7F, 0x80, 0x81, 0x82, 0xFF])):
            fast = dcap._decode_sgx_extension_fast(mutated)
            general = _general_sgx_extension(mutated, monkeypatch)
            if fast is not None:
                taken += 1
                assert fast == general, mutated.hex()
            try:
                full: dcap.PckInfo | None = dcap._decode_sgx_extension(mutated)
            except ValueError:
                full = None
            assert full == general, mutated.hex()
    assert taken > 100


# -- TCB info and QE identity -------------------------------------------------------------------------
def _no_fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dcap, "_svns_fast", lambda v, bools=True: None)
    monkeypatch.setattr(dcap, "_tcb_level_fast", lambda lv, tdx, bools: None)
    monkeypatch.setattr(dcap, "_isv_level_fast", lambda lv: None)


def _outcome(parse: Any, raw: str) -> tuple[Any, ...]:
    try:
        return ("ok", parse(raw))
    except AttestationError as e:
        return ("error", e.reason, e.field, e.detail)


_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    255,
    256,
    65535,
    65536,
    1.0,
    "x",
    "UpToDate",
    [],
    {},
    {"svn": 1},
    {"svn": True},
    "00",
]


def _mutate_json(doc: Any, rng: random.Random) -> Any:
    doc = copy.deepcopy(doc)
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            paths.append((node, key))
            walk(child)

    walk(doc)
    parent, key = rng.choice(paths)
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[key]
    elif isinstance(parent[key], int) and not isinstance(parent[key], bool) and rng.random() < 0.5:
        parent[key] += rng.choice([-1, 1, 250, 70000])
    else:
        parent[key] = copy.deepcopy(rng.choice(_VALUES))
    return doc


@pytest.mark.parametrize("kind", ["tcb_info", "qe_identity"])
def test_tcb_level_fast_paths_agree_with_the_field_by_field_checks(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parse = dcap._parse_tcb_info if kind == "tcb_info" else dcap._parse_qe_identity
    rng = random.Random(9)
    cases = []
    for coll in _collateral_docs():
        doc = json.loads(coll[kind])
        cases.append(coll[kind])
        cases += [json.dumps(_mutate_json(doc, rng), separators=(",", ":")) for _ in range(250)]
    fast = [_outcome(parse, raw) for raw in cases]
    _no_fast_paths(monkeypatch)
    general = [_outcome(parse, raw) for raw in cases]
    assert fast == general
    assert sum(o[0] == "ok" for o in fast) > 50


# -- quotes -------------------------------------------------------------------------------------------
def test_signature_data_fast_path_agrees_with_the_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(12)
    cases = []
    for name in SAMPLES:
        q = quote_bytes(name)
        cases.append((name, q))
        for _ in range(300):
            b = bytearray(q)
            pos = rng.randrange(layout(q).body[1], len(b))  # the signature data and what follows
            kind = rng.random()
            if kind < 0.5:
                b[pos] ^= rng.choice([0x01, 0x02, 0x80, 0xFF])
            elif kind < 0.75:
                del b[pos : pos + rng.randint(1, 4)]
            else:
                b[pos:pos] = bytes(rng.randint(1, 4))
            cases.append((name, bytes(b)))

    def outcomes() -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for name, data in cases:
            try:
                out.append(("ok", dcap.parse_quote(data, platform=platform_of(name))))
            except AttestationError as e:
                out.append(("error", e.reason, e.field, e.detail))
        return out

    fast = outcomes()
    monkeypatch.setattr(dcap, "_sig_data_fast", lambda sd, version: None)
    assert fast == outcomes()
    assert 100 < sum(o[0] == "ok" for o in fast) < len(cases) - 100


# -- records, CRLs ----------------------------------------------------------------------------------
def test_records_are_the_dataclasses_own() -> None:
    v = dcap.verify_quote(
        quote_bytes(TDX10),
        platform="tdx",
        collateral=dcap.load_collateral(fixture_bytes(DCAPQVL_COLLATERAL[TDX10]).decode()),
        at=AT[TDX10],
    )
    assert v.tcb is not None
    records: list[Any] = [v, v.quote, v.quote.body, v.quote.qe_report, v.pck, v.tcb]
    for obj in records:
        cls = type(obj)
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        built = cls(**values)
        assert built == obj and repr(built) == repr(obj)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, dataclasses.fields(obj)[0].name, None)
    info = dcap.parse_tcb_info(json.loads(fixture_bytes(DCAPQVL_COLLATERAL[TDX10]).decode())["tcb_info"])
    others: list[Any] = [info, info.levels[0], info.tdx_module, *info.tdx_module_identities]
    for obj in others:
        assert obj is not None
        assert type(obj)(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}) == obj
        assert hash(obj) == hash(type(obj)(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}))


def test_crl_lookups_agree_with_every_revoked_serial() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crl")])
    rng = random.Random(10)
    serials = [1, 127, 128, 255, 256, 2**63, 2**159 - 1] + [rng.getrandbits(rng.randint(1, 159)) | 1 for _ in range(40)]
    revoked = serials[::2]
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(dt.datetime(2025, 1, 1))
        .next_update(dt.datetime(2026, 1, 1))
    )
    for s in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(dt.datetime(2025, 1, 1)).build()
        )
    der = b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    crl = dcap._load_crl(der, platform="tdx", field="pck_crl")
    everything = {r.serial_number for r in x509.load_der_x509_crl(der)}
    near = [s + d for s in serials for d in (-1, 1, 256)]
    for s in [*serials, *near, 0, -5, 2**200, 2**1100 + 1]:
        assert crl.revokes(s) is (s in everything)
        assert crl.revokes(s) is (s in everything)  # the kept answer


def test_genuine_crl_lookups_agree_with_cryptography() -> None:
    for doc in _collateral_docs():
        for member in ("root_ca_crl", "pck_crl"):
            der = bytes.fromhex(doc[member])
            crl = dcap._load_crl(der, platform="tdx", field=member)
            revoked = [r.serial_number for r in x509.load_der_x509_crl(der)]
            for s in [*revoked, *(r + 1 for r in revoked), *(r - 1 for r in revoked), 1, 2**159 + 12345]:
                want = x509.load_der_x509_crl(der).get_revoked_certificate_by_serial_number(s) is not None
                assert crl.revokes(s) is want


def test_genuine_root_is_not_trusted_under_other_pins() -> None:
    # The Intel root is decoded at import, but only ``roots`` decides whether it is trusted.
    other = {bytes(32): "someone-else"}
    for name in (TDX10, "sgx/dcapqvl_sgx_v3_quote.bin"):
        dcap.clear_caches()
        with pytest.raises(AttestationError) as ei:
            dcap.verify_quote(quote_bytes(name), platform=platform_of(name), at=AT[name], roots=other)
        assert ei.value.reason is R.UNTRUSTED_ROOT and ei.value.field == "intel_root"


# -- warnings: silenced only where cryptography can emit them ------------------------------------------
def _patched_serial(der: bytes, old: bytes, new: bytes) -> bytes:
    i = der.index(old)
    return der[:i] + new + der[i + len(old) :]


def _self_signed(serial: int, name: x509.Name) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(dt.datetime(2025, 1, 1))
        .not_valid_after(dt.datetime(2026, 1, 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_crl_loading_does_not_warn() -> None:
    # _load_crl silences nothing: cryptography does not warn about a CRL, not even about revoked
    # serial numbers that are negative or zero (which it does warn about in certificates).
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crl")])
    der = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(dt.datetime(2025, 1, 1))
        .next_update(dt.datetime(2026, 1, 1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(0x7A).revocation_date(dt.datetime(2025, 1, 1)).build()
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    for serial in (b"\x02\x01\xfa", b"\x02\x01\x00", b"\x02\x01\x7a"):
        patched = _patched_serial(der, b"\x02\x01\x7a", serial)
        dcap.clear_caches()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            crl = dcap._load_crl(patched, platform="tdx", field="pck_crl")
            assert crl.revokes(int.from_bytes(serial[2:], "big", signed=True))
            assert [r.serial_number for r in crl.crl] == [int.from_bytes(serial[2:], "big", signed=True)]
    dcap.clear_caches()
    for genuine in _collateral_docs():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dcap._load_crl(bytes.fromhex(genuine["pck_crl"]), platform="tdx", field="pck_crl")


@pytest.mark.parametrize(
    ("serial", "country"),
    [(0x7A, "US"), (-6, "US"), (0, "US"), (0x7A, "USA")],  # plain; negative; zero; an odd country name
)
def test_certificate_warnings_are_silenced_and_only_when_they_can_happen(serial: int, country: str) -> None:
    # The serial is patched in after signing: CertificateBuilder refuses serials ≤ 0, and decoding
    # happens before any signature check. "USA" makes cryptography warn when it decodes the name.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = x509.NameAttribute(NameOID.COUNTRY_NAME, country, _validate=False)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warns"), c])
    der = _patched_serial(_self_signed(0x7A, name), b"\x02\x01\x7a", b"\x02\x01" + (serial & 0xFF).to_bytes(1, "big"))
    positive = dcap._tbs_parts(der)[4]
    assert positive is (serial > 0)
    pem = b"-----BEGIN CERTIFICATE-----\n" + binascii.b2a_base64(der, newline=False) + b"\n-----END CERTIFICATE-----\n"
    dcap.clear_caches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        chain = dcap._pem_chain(pem, platform="tdx", what="pck_chain")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = x509.load_der_x509_certificate(der)
        assert (chain.items[0].subject, chain.items[0].cn) == (want.subject.rfc4514_string(), "warns")
        assert want.serial_number == serial


# -- certificate extensions ---------------------------------------------------------------------------
def _cryptography_extensions(der: bytes) -> tuple[Any, ...] | None:
    """What the general path reads of a certificate's extensions (``_Cert._scan`` and
    ``parse_pck_extensions``): basicConstraints, keyUsage, the SGX extension's value, and whether
    another extension is critical; None if cryptography refuses them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exts = x509.load_der_x509_certificate(der).extensions
    except (ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension):
        return None
    bc = ku = sgx = None
    other_critical = False
    for e in exts:
        if isinstance(e.value, x509.BasicConstraints):
            bc = e.value
        elif isinstance(e.value, x509.KeyUsage):
            ku = e.value
        else:
            other_critical |= e.critical
            if e.oid.dotted_string == "1.2.840.113741.1.13.1":
                assert isinstance(e.value, x509.UnrecognizedExtension)
                sgx = e.value.value
    return bc, ku, sgx, other_critical


def _fast_extensions(der: bytes) -> tuple[Any, ...] | None:
    fast = dcap._intel_extensions(dcap._tbs_parts(der)[5])
    return None if fast is None else (*fast, False)


def _intel_ders() -> list[bytes]:
    ders: list[bytes] = []
    for name in SAMPLES:
        ders += dcap._pem_ders(_pck_chain_pem(name)) or []
    for doc in _collateral_docs():
        ders += dcap._pem_ders(doc["tcb_info_issuer_chain"].encode()) or []
    return list(dict.fromkeys(ders))


def test_genuine_certificates_take_the_extension_fast_path() -> None:
    ders = _intel_ders()
    assert len(ders) >= 6  # PCK leaves, both PCK CAs, TCB Signing, the root
    for der in ders:
        want = _cryptography_extensions(der)
        assert want is not None and _fast_extensions(der) == want
        c = dcap._decode_cert(der)
        assert c._scanned and c._sgx_ext == want[2]


def test_extension_fast_path_agrees_with_cryptography_on_mutations() -> None:
    rng = random.Random(5)
    checked = answered = 0
    for der in _intel_ders():
        rest = dcap._tbs_parts(der)[5]
        start = der.index(rest)
        for _ in range(300):
            b = bytearray(der)
            for _ in range(rng.randint(1, 2)):
                b[start + rng.randrange(len(rest))] = rng.choice(b"\x00\x01\x02\x03\x04\x06\x30\x55\x80\x81\x82\x86\xa0\xff")
            m = bytes(b)
            if not _parses(m):
                continue
            checked += 1
            try:
                fast = _fast_extensions(m)
            except IndexError:  # _decode_cert turns this into MALFORMED, as cryptography's errors
                continue
            if fast is not None:
                answered += 1
                assert fast == _cryptography_extensions(m)
    assert checked > 200 and answered > 20


def _with_extensions(*exts: tuple[x509.ExtensionType, bool]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX TCB Signing")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(dt.datetime(2025, 1, 1))
        .not_valid_after(dt.datetime(2026, 1, 1))
    )
    for value, critical in exts:
        builder = builder.add_extension(value, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _ku(**bits: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    names += ("key_cert_sign", "crl_sign")
    return x509.KeyUsage(**{n: bits.get(n, False) for n in names}, encipher_only=False, decipher_only=False)


_AKI = x509.AuthorityKeyIdentifier(bytes(range(20)), None, None)
_SKI = x509.SubjectKeyIdentifier(bytes(range(20, 40)))


def _dp(*uris: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(u) for u in uris], None, None, None)]
    )


@pytest.mark.parametrize(
    ("exts", "fast"),
    [
        # Intel's set: read from the DER.
        (
            [
                (_AKI, False),
                (_dp("https://x.example/crl"), False),
                (_SKI, False),
                (_ku(digital_signature=True, content_commitment=True), True),
                (x509.BasicConstraints(False, None), True),
            ],
            True,
        ),
        ([(x509.BasicConstraints(True, 0), True), (_ku(key_cert_sign=True, crl_sign=True), True), (_dp(""), False)], True),
        ([(_SKI, False), (_dp("h" * 110), False)], True),
        # Anything else: cryptography decides.
        ([(_AKI, True)], False),  # a critical AKI: cryptography reports it, the chain check refuses it
        ([(_dp("h" * 111), False)], False),  # a long form length inside
        ([(_dp("a", "b"), False)], False),  # two URIs
        ([(_ku(digital_signature=True), True)], False),  # another keyUsage
        ([(x509.BasicConstraints(True, 5), True)], False),
        ([(x509.BasicConstraints(False, None), False)], False),  # not critical
        ([(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)], False),
        ([(x509.AuthorityKeyIdentifier(bytes(19), None, None), False)], False),
        ([(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.840.113741.1.13.1"), b"\x30\x00"), True)], False),
        ([], False),
    ],
)
def test_extension_fast_path_takes_only_intel_encodings(exts: list[tuple[x509.ExtensionType, bool]], fast: bool) -> None:
    der = _with_extensions(*exts)
    got = _fast_extensions(der)
    assert (got is not None) is fast
    if got is not None:
        assert got == _cryptography_extensions(der)
    chain = dcap._decode_cert(der)
    want = _cryptography_extensions(der)
    assert want is not None
    assert (chain.basic_constraints(), chain.key_usage(), chain.unknown_critical() is not None) == (want[0], want[1], want[3])


def test_duplicate_extensions_leave_the_fast_path() -> None:
    # CertificateBuilder refuses duplicates: a genuine leaf's SKI is repeated in its DER, lengths
    # patched, and cryptography then refuses the certificate's extensions.
    der = _intel_ders()[0]
    rest = dcap._tbs_parts(der)[5]
    ski = rest[rest.index(dcap._SKI_HEAD) : rest.index(dcap._SKI_HEAD) + 31]
    ext_seq = rest[4:] if rest[1] == 0x82 else rest[3:]
    body = ext_seq[4:] + ski if ext_seq[1] == 0x82 else ext_seq[3:] + ski
    seq = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    new_rest = b"\xa3\x82" + len(seq).to_bytes(2, "big") + seq
    assert dcap._intel_extensions(new_rest) is None


def test_raw_signature_der_is_cryptographys() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        sig = bytes(rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)]) for _ in range(64))
        want = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        assert dcap._dss_der(sig) == want
