"""Published test vectors: RFC 9591 Appendix E (+ ZF frost runs), ZF DKG vectors, BIP340."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardguard.crypto.frost import binding_factor_inputs, prepare, sign_share
from shardguard.crypto.pok import pok_verify
from shardguard.crypto.shamir import eval_polynomial
from shardguard.crypto.suites import BIP340, suite_by_context
from shardguard.interop import verify_independently
from shardguard.protocols.dkg._party import finish_key
from shardguard.protocols.frost import CheaterDetection
from tests.helpers.vectors import h, load, vector_files, vector_id

FROST_FILES = vector_files("frost")
DKG_FILES = vector_files("dkg")


@pytest.mark.parametrize("path", FROST_FILES, ids=[vector_id(p) for p in FROST_FILES])
def test_frost_signing_vector(path: Path) -> None:
    """Every intermediate value of RFC 9591 §5 (and §4.1 nonce generation) is reproduced."""
    v = load(path)
    suite = suite_by_context(v["config"]["suite"])
    g = suite.group
    inp = v["inputs"]
    gsk = g.scalar_decode(h(inp["group_secret_key"]))
    pk = g.decode(h(inp["group_public_key"]))
    assert g.base_mul(gsk) == pk
    coeffs = [gsk] + [g.scalar_decode(h(c)) for c in inp["share_polynomial_coefficients"]]
    shares = {s["identifier"]: g.scalar_decode(h(s["participant_share"])) for s in inp["participant_shares"]}
    for i, s in shares.items():
        assert eval_polynomial(coeffs, i, g.order) == s
    msg = h(inp["message"])

    nonces, commitments = {}, []
    for out in v["round_one_outputs"]["outputs"]:
        i = out["identifier"]
        d = suite.nonce_generate(shares[i], lambda n, x=out["hiding_nonce_randomness"]: h(x)[:n])
        e = suite.nonce_generate(shares[i], lambda n, x=out["binding_nonce_randomness"]: h(x)[:n])
        assert g.scalar_encode(d).hex() == out["hiding_nonce"]
        assert g.scalar_encode(e).hex() == out["binding_nonce"]
        assert g.encode(g.base_mul(d)).hex() == out["hiding_nonce_commitment"]
        assert g.encode(g.base_mul(e)).hex() == out["binding_nonce_commitment"]
        nonces[i] = (d, e)
        commitments.append((i, g.base_mul(d), g.base_mul(e)))
    assert sorted(nonces) == inp["participant_list"]

    ctx = prepare(suite, pk, commitments, msg)
    for i, (d, e) in nonces.items():
        # A signer's own commitment share from its nonces ((d + ρ·e)·G): the same context.
        assert prepare(suite, pk, commitments, msg, own=(i, d, e)) == ctx
        assert prepare(suite, pk, commitments, msg, own=(i, d + 1, e)).group_commitment != ctx.group_commitment
    inputs = binding_factor_inputs(suite, ctx.group_key, ctx.commitments, msg)
    for out in v["round_one_outputs"]["outputs"]:
        i = out["identifier"]
        assert inputs[i].hex() == out["binding_factor_input"]
        assert g.scalar_encode(ctx.rho[i]).hex() == out["binding_factor"]

    z = {}
    for out in v["round_two_outputs"]["outputs"]:
        i = out["identifier"]
        d, e = nonces[i]
        z[i] = sign_share(
            suite,
            hiding=d,
            binding=e,
            rho=ctx.rho[i],
            lam=ctx.lambdas[i],
            signing_share=shares[i] * ctx.key_factor,
            challenge=ctx.challenge,
            nonce_factor=ctx.nonce_factor,
        )
        assert g.scalar_encode(z[i]).hex() == out["sig_share"]
    verifying = {i: g.base_mul(s) for i, s in shares.items()}
    assert not ctx.invalid_shares(z, verifying, CheaterDetection.ALL_CHEATERS)
    sig = ctx.signature(z)
    assert sig.hex() == v["final_output"]["sig"]
    assert suite.verify(pk, msg, sig)
    assert verify_independently(suite.scheme, suite.encode_public_key(pk), msg, sig)
    assert not suite.verify(pk, msg + b"x", sig)


@pytest.mark.parametrize("path", DKG_FILES, ids=[vector_id(p) for p in DKG_FILES])
def test_dkg_vector(path: Path) -> None:
    """ZF DKG vectors: commitments, proofs of knowledge (ZF challenge = our PoK with an empty
    context), share checks, final shares and (for TR) the BIP341 post-DKG tweak."""
    v = load(path)
    suite = suite_by_context(v["config"]["suite"])
    g = suite.group
    t = v["config"]["min_participants"]
    parts = {p["identifier"]: p for p in v["participants"]}
    ids = sorted(parts)
    polys, comms = {}, {}
    for i, p in parts.items():
        coeffs = [g.scalar_decode(h(p["signing_key"]))] + [g.scalar_decode(h(c)) for c in p["coefficients"]]
        assert len(coeffs) == t
        comm = [g.decode(h(c)) for c in p["vss_commitments"]]
        assert comm == [g.base_mul(a) for a in coeffs]
        proof = h(p["proof_of_knowledge"])
        r_len = len(proof) - g.scalar_size
        r_enc = proof[:r_len] if r_len == g.element_size else b"\x02" + proof[:r_len]
        assert pok_verify(suite, i, comm[0], (g.decode(r_enc), g.scalar_decode(proof[r_len:])))
        assert not pok_verify(suite, i % len(ids) + 1, comm[0], (g.decode(r_enc), g.scalar_decode(proof[r_len:])))
        polys[i], comms[i] = coeffs, comm
    summed = [g.sum(comms[i][k] for i in ids) for k in range(t)]
    for i, p in parts.items():
        received = {r["from_identifier"]: g.scalar_decode(h(r["signing_share"])) for r in p["received_signing_shares"]}
        for j, s in received.items():
            assert eval_polynomial(polys[j], i, g.order) == s
        total = (eval_polynomial(polys[i], i, g.order) + sum(received.values())) % g.order
        key = finish_key(suite, i, ids, t, total, summed)
        assert g.scalar_encode(key.signing_share).hex() == p["signing_share"]
        assert g.encode(key.public.verifying_shares[i]).hex() == p["verifying_share"]
        assert g.encode(key.public.group_key).hex() == v["group_public_key"]


def test_repair_vectors_scalar_sums() -> None:
    """ZF repair vectors: sums of random deltas / sigmas with each suite's scalar encoding."""
    for path in vector_files("repair"):
        v = load(path)
        g = suite_by_context(v["config"]["suite"]).group
        for section, items, total in (
            ("scalar_generation", "random_scalars", "random_scalar_sum"),
            ("sigma_generation", "sigmas", "sigma_sum"),
        ):
            xs = [g.scalar_decode(h(x)) for x in v[section][items]]
            assert g.scalar_encode(sum(xs) % g.order).hex() == v[section][total]


BIP340_ROWS = load(vector_files("bip340")[0])


@pytest.mark.parametrize("row", BIP340_ROWS, ids=[f"bip340-{r['index']}" for r in BIP340_ROWS])
def test_bip340_verification_vector(row: dict[str, str]) -> None:
    """Our BIP340 verification path agrees with every official vector (and with libsecp256k1)."""
    expected = row["result"] == "valid"
    pk, msg, sig = h(row["public_key"]), h(row["message"]), h(row["signature"])
    assert BIP340.verify_xonly(pk, msg, sig) is expected
    assert verify_independently("bip340", pk, msg, sig) is expected
