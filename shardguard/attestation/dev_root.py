"""The DEVELOPMENT root CA of the simulated enclave (ARCHITECTURE §5) — INSECURE by design.

The simulated backend (:mod:`shardguard.enclave.simulated`) signs Nitro-shaped evidence
(``fixtures/attestation/README.md``, "AWS Nitro Enclaves"; ``specs/enclave-backends.md`` §1.3)
with a leaf certificate issued by this root. The root's **private key is public**: it ships in
``shardguard/enclave/_dev_root_key.py``, so anyone can forge evidence that chains here.

Verifiers recognise this root only through ``simulated_roots`` (``verify_nitro``). ``verify_evidence``
always passes it, so that such a document is *named* (``Verified(simulated=True)``) rather than
reported as an unknown root — and then the policy refuses it (``AttestationReason.SIMULATED``)
unless the policy says ``allow_simulated``. Never add :data:`DEV_ROOTS` to a platform's pinned roots.

Like every root, it is pinned by the SHA-256 of its SubjectPublicKeyInfo, not by its name.
P-384, ECDSA-SHA384, valid 2026-01-01 to 2046-01-01, CA with keyCertSign/cRLSign.
"""

from __future__ import annotations

__all__ = ["DEV_ROOTS", "DEV_ROOT_NAME", "DEV_ROOT_PEM", "DEV_ROOT_SPKI_SHA256"]

DEV_ROOT_NAME = "shardguard-development-root (INSECURE)"

#: SHA-256 of the root's DER SubjectPublicKeyInfo (checked against the PEM by the tests).
DEV_ROOT_SPKI_SHA256 = bytes.fromhex("b59ad779b081e2eefcd9b49b9e5694d1324244d61f6d63e61c99023dc042ecfe")

#: Pin for ``verify_nitro(..., simulated_roots=DEV_ROOTS)``; never merge into production pins.
DEV_ROOTS: dict[bytes, str] = {DEV_ROOT_SPKI_SHA256: DEV_ROOT_NAME}

#: Subject and issuer: C=ZZ, O=ShardGuard, OU=DEVELOPMENT ONLY - private key is public,
#: CN=shardguard-development-root (INSECURE).
DEV_ROOT_PEM = b"""-----BEGIN CERTIFICATE-----
MIICjzCCAhWgAwIBAgIUNkfll/he1IBWciQsiH3/PI+tINkwCgYIKoZIzj0EAwMw
gYYxCzAJBgNVBAYTAlpaMRMwEQYDVQQKDApTaGFyZEd1YXJkMTEwLwYDVQQLDChE
RVZFTE9QTUVOVCBPTkxZIC0gcHJpdmF0ZSBrZXkgaXMgcHVibGljMS8wLQYDVQQD
DCZzaGFyZGd1YXJkLWRldmVsb3BtZW50LXJvb3QgKElOU0VDVVJFKTAeFw0yNjAx
MDEwMDAwMDBaFw00NjAxMDEwMDAwMDBaMIGGMQswCQYDVQQGEwJaWjETMBEGA1UE
CgwKU2hhcmRHdWFyZDExMC8GA1UECwwoREVWRUxPUE1FTlQgT05MWSAtIHByaXZh
dGUga2V5IGlzIHB1YmxpYzEvMC0GA1UEAwwmc2hhcmRndWFyZC1kZXZlbG9wbWVu
dC1yb290IChJTlNFQ1VSRSkwdjAQBgcqhkjOPQIBBgUrgQQAIgNiAATndvZFA5ow
8ATeMKhnO7/ORbr91iYIUQeiqqJUWXMbyoylpVMV1oNhmCA5p8iZrGI8eTo0LkBB
WH1+kLsDo0cgbUSYyf+1B7+6GynXl4a25wPnt1EiJzRkg191MK2EbLCjQjBAMA8G
A1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBQAmb+qEtuo
cGRvpAJ0DXQXZyaC8TAKBggqhkjOPQQDAwNoADBlAjEAl8N0+MQdm9KLcAXRY7kX
bQSr6cKQs8U9p9ZYUNVLX5CbxBboO1u9ULxVEGbI7r0QAjA3w6pdxDHPSckk7tmj
e11HU8fJVPEV6wKCM7HWiW3hfAfmryBdOYZMt6BzzO/77ek=
-----END CERTIFICATE-----
"""
