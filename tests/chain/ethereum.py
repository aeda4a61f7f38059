"""A real Ethereum node (anvil, from Foundry) and EIP-1559 transactions for acceptance tests.

anvil comes from the npm registry: ``@foundry-rs/anvil`` has the binary in an optional
per-platform package (``@foundry-rs/anvil-linux-amd64`` etc.), so ``npm install`` fetches it
from the registry like any package; nothing is downloaded from elsewhere. It is installed once
into ``.cache/anvil`` (git-ignored) with ``--ignore-scripts`` (the package's postinstall only
re-checks or re-fetches that same binary) and the platform binary is run directly.

References:
    * EIP-2718 typed transactions; EIP-1559 "Specification": the type-2 payload
      ``rlp([chain_id, nonce, max_priority_fee_per_gas, max_fee_per_gas, gas_limit,
      destination, amount, data, access_list, signature_y_parity, signature_r, signature_s])``,
      signed over ``keccak256(0x02 || rlp([...the first nine...]))``.
    * EIP-2: ``s`` must not exceed ``n/2``.
    * Yellow Paper, Appendix F: an address is the last 20 bytes of ``keccak256`` of the
      64-byte uncompressed public key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coincurve
import rlp  # type: ignore[import-untyped]
from eth_hash.auto import keccak

ANVIL_VERSION = "1.7.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
ANVIL_CACHE = REPO_ROOT / ".cache" / "anvil"

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
TX_TYPE_EIP1559 = 0x02
TRANSFER_GAS = 21_000

_NPM_TIMEOUT_S = 300
_START_TIMEOUT_S = 15
_PLATFORMS = {
    ("linux", "x86_64"): "linux-amd64",
    ("linux", "aarch64"): "linux-arm64",
    ("darwin", "x86_64"): "darwin-amd64",
    ("darwin", "arm64"): "darwin-arm64",
}


class AnvilUnavailable(RuntimeError):
    """anvil could not be installed or started; the message says why."""


# -- obtaining and running anvil -------------------------------------------------------------------
def _platform_package() -> str:
    key = (sys.platform, platform.machine().lower())
    if key not in _PLATFORMS:
        raise AnvilUnavailable(f"@foundry-rs/anvil ships no binary for {key}")
    return f"@foundry-rs/anvil-{_PLATFORMS[key]}"


def _binary_path() -> Path:
    return ANVIL_CACHE / "node_modules" / _platform_package() / "bin" / "anvil"


def _version_ok(binary: Path) -> bool:
    if not binary.is_file():
        return False
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    return out.returncode == 0 and f"anvil Version: {ANVIL_VERSION}" in out.stdout


def anvil_binary() -> Path:
    """The anvil binary of ``@foundry-rs/anvil@ANVIL_VERSION``, installing it with npm if needed."""
    binary = _binary_path()
    ANVIL_CACHE.mkdir(parents=True, exist_ok=True)
    with open(ANVIL_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time across test processes
        if _version_ok(binary):
            return binary
        npm = shutil.which("npm")
        if npm is None:
            raise AnvilUnavailable(
                "npm is not on PATH: the Ethereum acceptance tests install anvil from the npm registry "
                f"(@foundry-rs/anvil@{ANVIL_VERSION}); install Node.js and npm (Debian: apt-get install npm)"
            )
        cmd = [npm, "install", "--prefix", str(ANVIL_CACHE), "--ignore-scripts", "--no-audit", "--no-fund", "--no-save",
               f"@foundry-rs/anvil@{ANVIL_VERSION}"]  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=_NPM_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise AnvilUnavailable(f"{' '.join(cmd)} did not finish in {_NPM_TIMEOUT_S} s") from None
        if out.returncode != 0:
            raise AnvilUnavailable(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
        if not _version_ok(binary):
            raise AnvilUnavailable(f"npm installed @foundry-rs/anvil@{ANVIL_VERSION} but {binary} is missing or not that version")
        return binary


@dataclass
class AnvilNode:
    """A running anvil on 127.0.0.1 and a JSON-RPC client for it."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    _ids: int = 0

    def rpc(self, method: str, *params: Any) -> Any:
        self._ids += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._ids, "method": method, "params": list(params)}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # only ever 127.0.0.1
            reply = json.loads(response.read())
        if "error" in reply:
            raise RpcError(method, reply["error"])
        return reply["result"]

    def wait_for_receipt(self, tx_hash: str, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            receipt = self.rpc("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                return dict(receipt)
            time.sleep(0.05)
        raise TimeoutError(f"no receipt for {tx_hash} within {timeout_s} s")


class RpcError(RuntimeError):
    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.method = method
        self.code = error.get("code")
        self.message = str(error.get("message", ""))
        super().__init__(f"{method}: {self.code} {self.message}")


@contextlib.contextmanager
def run_anvil() -> Iterator[AnvilNode]:
    """Start anvil on 127.0.0.1 (a port the OS picks) and stop it on exit."""
    binary = anvil_binary()
    with tempfile.TemporaryDirectory(prefix="shardguard-anvil-") as tmp:
        log = Path(tmp) / "anvil.log"
        with open(log, "wb") as out:
            # --port 0: the OS picks a free port and anvil prints it ("Listening on 127.0.0.1:N").
            cmd = [str(binary), "--host", "127.0.0.1", "--port", "0", "--accounts", "0", "--color", "never"]
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            node = AnvilNode(_wait_for_listen(process, log), process, log)
            node.rpc("eth_chainId")  # answers once the server is up
            yield node
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _wait_for_listen(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if m := re.search(r"Listening on (127\.0\.0\.1:\d+)", text):
            return f"http://{m.group(1)}"
        if process.poll() is not None:
            raise AnvilUnavailable(f"anvil exited with {process.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:]
    raise AnvilUnavailable(f"anvil did not start listening within {_START_TIMEOUT_S} s:\n{tail}")


# -- keys, addresses and EIP-1559 transactions -----------------------------------------------------
def address_of(public_key: bytes) -> bytes:
    """The 20-byte address of a secp256k1 public key (33-byte compressed or 65-byte uncompressed)."""
    uncompressed = coincurve.PublicKey(public_key).format(compressed=False)
    return bytes(keccak(uncompressed[1:])[-20:])


def hex_address(address: bytes) -> str:
    return "0x" + address.hex()


@dataclass(frozen=True)
class Eip1559Tx:
    chain_id: int
    nonce: int
    max_priority_fee_per_gas: int
    max_fee_per_gas: int
    gas_limit: int
    to: bytes
    value: int
    data: bytes = b""

    def _fields(self) -> list[Any]:
        if len(self.to) != 20:
            raise ValueError("destination must be a 20-byte address")
        access_list: list[Any] = []
        return [self.chain_id, self.nonce, self.max_priority_fee_per_gas, self.max_fee_per_gas, self.gas_limit,
                self.to, self.value, self.data, access_list]  # fmt: skip

    def signing_hash(self) -> bytes:
        """``keccak256(0x02 || rlp([chain_id, ..., access_list]))`` (EIP-1559)."""
        return bytes(keccak(bytes([TX_TYPE_EIP1559]) + rlp.encode(self._fields())))

    def signed(self, y_parity: int, r: int, s: int) -> bytes:
        """The raw signed transaction ``0x02 || rlp([..., y_parity, r, s])`` for ``eth_sendRawTransaction``."""
        if y_parity not in (0, 1):
            raise ValueError("y_parity must be 0 or 1")
        if not (0 < r < SECP256K1_ORDER and 0 < s <= SECP256K1_ORDER // 2):
            raise ValueError("r must be in [1, n) and s in [1, n/2] (EIP-2)")
        return bytes([TX_TYPE_EIP1559]) + rlp.encode([*self._fields(), y_parity, r, s])


def recover_address(digest: bytes, y_parity: int, r: int, s: int) -> bytes:
    """The address whose key made ``(r, s)`` with this y parity over ``digest`` (libsecp256k1)."""
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([y_parity])
    return address_of(coincurve.PublicKey.from_signature_and_message(compact, digest, hasher=None).format())


def transfer(node: AnvilNode, tx: Eip1559Tx, y_parity: int, r: int, s: int) -> dict[str, Any]:
    """Send a signed transfer and return its receipt (raises :class:`RpcError` if the node refuses it)."""
    raw = tx.signed(y_parity, r, s)
    tx_hash = node.rpc("eth_sendRawTransaction", "0x" + raw.hex())
    if tx_hash != "0x" + bytes(keccak(raw)).hex():
        raise AssertionError(f"node returned tx hash {tx_hash}, not keccak256 of the raw transaction")
    return node.wait_for_receipt(tx_hash)


def fees(node: AnvilNode) -> tuple[int, int]:
    """``(max_priority_fee_per_gas, max_fee_per_gas)`` for the next block: 1 gwei tip, 2·base fee + tip."""
    base = int(node.rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
    tip = 10**9
    return tip, 2 * base + tip
