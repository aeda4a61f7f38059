"""EIP-1559 transfers signed by a 2-of-3 DKLs23 threshold ECDSA group are mined by a real
Ethereum node (anvil), which recovers the sender from the signature alone.

anvil is installed from the npm registry on first use (see ``tests/chain/ethereum.py``); with no
npm on the machine these tests fail with a message saying so, they are never skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import coincurve
import pytest
from bip_utils import Bip32KeyData, Bip32Secp256k1
from eth_hash.auto import keccak

from shardguard import local
from tests.chain.ethereum import (
    TRANSFER_GAS,
    AnvilNode,
    AnvilUnavailable,
    Eip1559Tx,
    RpcError,
    address_of,
    fees,
    hex_address,
    recover_address,
    run_anvil,
    transfer,
)
from tests.helpers.rng import DeterministicRng

FUNDS_WEI = 10**18
RECIPIENT = bytes(keccak(b"shardguard/ethereum-test/recipient"))[-20:]


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    try:
        with run_anvil() as node:
            yield node
    except AnvilUnavailable as exc:
        pytest.fail(f"no anvil node for the Ethereum acceptance tests: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def shares() -> list[local.EcdsaKeyShare]:
    return local.ecdsa_keygen(2, 3, rng=DeterministicRng(1559))


def _fund(node: AnvilNode, address: bytes) -> None:
    node.rpc("anvil_setBalance", hex_address(address), hex(FUNDS_WEI))
    assert int(node.rpc("eth_getBalance", hex_address(address), "latest"), 16) == FUNDS_WEI


def _transfer_tx(node: AnvilNode, sender: bytes, value: int) -> Eip1559Tx:
    tip, max_fee = fees(node)
    return Eip1559Tx(
        chain_id=int(node.rpc("eth_chainId"), 16),
        nonce=int(node.rpc("eth_getTransactionCount", hex_address(sender), "pending"), 16),
        max_priority_fee_per_gas=tip,
        max_fee_per_gas=max_fee,
        gas_limit=TRANSFER_GAS,
        to=RECIPIENT,
        value=value,
    )


def _recipient_balance(node: AnvilNode) -> int:
    return int(node.rpc("eth_getBalance", hex_address(RECIPIENT), "latest"), 16)


def _assert_mined_from(node: AnvilNode, receipt: dict[str, object], sender: bytes) -> None:
    assert receipt["status"] == "0x1"
    assert receipt["from"] == hex_address(sender)  # the node recovered our address from (yParity, r, s)
    assert receipt["to"] == hex_address(RECIPIENT)
    assert int(str(receipt["gasUsed"]), 16) == TRANSFER_GAS
    assert node.rpc("eth_getTransactionByHash", receipt["transactionHash"])["from"] == hex_address(sender)


def test_single_key_transfer(anvil: AnvilNode) -> None:
    """Harness self-test: a libsecp256k1 (coincurve) signature is accepted."""
    key = coincurve.PrivateKey((0xC0FFEE).to_bytes(32, "big"))
    sender = address_of(key.public_key.format())
    _fund(anvil, sender)
    tx = _transfer_tx(anvil, sender, 1_000)
    sig = key.sign_recoverable(tx.signing_hash(), hasher=None)
    r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    before = _recipient_balance(anvil)
    _assert_mined_from(anvil, transfer(anvil, tx, v, r, s), sender)
    assert _recipient_balance(anvil) == before + 1_000


def test_threshold_ecdsa_transfers(anvil: AnvilNode, shares: list[local.EcdsaKeyShare]) -> None:
    """Every 2-subset of a 2-of-3 group sends from the group's address; nonces 0, 1, 2."""
    group_key = shares[0].public.public_key_bytes
    sender = address_of(group_key)
    _fund(anvil, sender)
    for n, signers in enumerate(itertools.combinations(shares, 2)):
        tx = _transfer_tx(anvil, sender, 10_000 + n)
        assert tx.nonce == n
        digest = tx.signing_hash()
        sig = local.ecdsa_sign(list(signers), digest)
        assert sig.public_key == group_key
        assert sig.digest == digest
        assert sig.recovery_id in (0, 1)  # 2/3 (x(R) >= n) cannot be sent as yParity
        assert recover_address(digest, sig.recovery_id, sig.r, sig.s) == sender
        before = _recipient_balance(anvil)
        _assert_mined_from(anvil, transfer(anvil, tx, sig.recovery_id, sig.r, sig.s), sender)
        assert _recipient_balance(anvil) == before + 10_000 + n


def test_threshold_ecdsa_transfer_from_derived_key(anvil: AnvilNode, shares: list[local.EcdsaKeyShare]) -> None:
    """``path=(0, 7)``, i.e. m/0/7: the sender is the address of the BIP32 child key (computed here by bip_utils)."""
    group_key, chain_code = shares[0].public.public_key_bytes, shares[0].chain_code
    child = Bip32Secp256k1.FromPublicKey(group_key, Bip32KeyData(chain_code=chain_code)).DerivePath("0/7")
    child_key = child.PublicKey().RawCompressed().ToBytes()
    sender = address_of(child_key)
    assert sender != address_of(group_key)
    _fund(anvil, sender)
    tx = _transfer_tx(anvil, sender, 777)
    sig = local.ecdsa_sign([shares[2], shares[1]], tx.signing_hash(), path=(0, 7))
    assert (sig.public_key, sig.path) == (child_key, "m/0/7")
    _assert_mined_from(anvil, transfer(anvil, tx, sig.recovery_id, sig.r, sig.s), sender)


def test_wrong_y_parity_is_another_sender(anvil: AnvilNode, shares: list[local.EcdsaKeyShare]) -> None:
    """Negative: with the other yParity the node recovers an unfunded stranger and refuses the tx."""
    sender = address_of(shares[0].public.public_key_bytes)
    _fund(anvil, sender)
    tx = _transfer_tx(anvil, sender, 1)
    sig = local.ecdsa_sign(shares[:2], tx.signing_hash())
    stranger = recover_address(tx.signing_hash(), 1 - sig.recovery_id, sig.r, sig.s)
    assert stranger != sender
    with pytest.raises(RpcError, match=r"(?i)insufficient funds"):
        transfer(anvil, tx, 1 - sig.recovery_id, sig.r, sig.s)
    nonce = int(anvil.rpc("eth_getTransactionCount", hex_address(sender), "pending"), 16)
    assert nonce == tx.nonce  # nothing was sent from our address
