"""Request and response bodies (pydantic). Requests are strict: unknown fields, wrong JSON types,
bad hex or base64 are 422 errors naming the field."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, WithJsonSchema

__all__ = [
    "AuditIn",
    "AuditPost",
    "CommitmentIn",
    "CreateKey",
    "CreateToken",
    "NodeError",
    "OutMessage",
    "PostMessages",
    "PublishCommitments",
    "Register",
    "Repair",
    "SignRequest",
    "TaskResult",
]

NODE_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
NodeId = Annotated[str, StringConstraints(pattern=NODE_ID_PATTERN)]
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not valid base64 (RFC 4648, with padding)") from None


def _hex(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a hex string")
    if not _HEX.fullmatch(value):
        raise ValueError("not valid hex (an even number of hex digits)")
    return bytes.fromhex(value)


def _blob(value: object) -> bytes:
    # bytes only from an event-stream frame's attachment (API.md §1.11); JSON has no bytes.
    return value if isinstance(value, bytes) else _b64(value)


B64 = Annotated[bytes, PlainValidator(_b64), WithJsonSchema({"type": "string", "contentEncoding": "base64"})]
Blob = Annotated[bytes, PlainValidator(_blob), WithJsonSchema({"type": "string", "contentEncoding": "base64"})]
Hex = Annotated[bytes, PlainValidator(_hex), WithJsonSchema({"type": "string", "pattern": "^([0-9a-fA-F]{2})*$"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateKey(_Strict):
    scheme: Literal["ecdsa", "ed25519", "secp256k1", "bip340"]
    threshold: int = Field(ge=1, le=255)
    nodes: list[NodeId] = Field(min_length=1, max_length=255, description="party i + 1 is nodes[i]")
    allow_single: bool = Field(default=False, description="allow t = 1 (any one node signs alone)")


class SignRequest(_Strict):
    digest_hex: Hex | None = Field(default=None, description="ecdsa: the 32-byte digest to sign")
    message_hex: Hex | None = Field(default=None, description="ed25519, secp256k1, bip340 (FROST): the message")
    path: str | None = Field(default=None, max_length=2900, description="non-hardened BIP32 path m/i/j/… (not ed25519)")
    signers: list[NodeId] | None = Field(default=None, min_length=1, max_length=255)


class Repair(_Strict):
    lost: NodeId
    helpers: list[NodeId] | None = Field(default=None, min_length=1, max_length=255)


class CreateToken(_Strict):
    scopes: list[Literal["keys:write", "sign:write", "read", "nodes:register", "admin"]] = Field(min_length=1, max_length=5)
    label: str = Field(default="", max_length=200)


class Register(_Strict):
    peer_card: B64 = Field(description="PeerCard.encode(), base64")
    platform: Literal["nitro", "sev-snp", "tdx", "sgx"]
    evidence: B64 = Field(description="attestation evidence, base64")
    collateral: B64 | None = Field(default=None, description="SEV-SNP VCEK/VLEK certificate or TDX/SGX collateral JSON, base64")
    evidence_nonce: Hex | None = Field(default=None, description="the nonce the evidence binds: binding(card, nonce)")
    challenges: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=256,
        description='the verifiers\' challenges the evidence answers, [{"from": node id, "nonce": hex}]; '
        "evidence_nonce must then be their challenge_nonce (API.md §1.12)",
    )


class ChallengeIn(_Strict):
    nonce: Hex = Field(description="32 fresh random bytes, hex")
    wait: float = Field(default=0.0, ge=0, le=300, description="seconds to wait for evidence answering it")


class OutMessage(_Strict):
    to: Annotated[str, StringConstraints(pattern=r"^(\*|[a-z0-9][a-z0-9._-]{0,63})$")]
    seq: int = Field(ge=0, le=2**63 - 1)
    blob: Blob


class PostMessages(_Strict):
    messages: list[OutMessage] = Field(min_length=1, max_length=1024)


class NodeError(_Strict):
    reason: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    culprits: list[NodeId] = Field(default_factory=list, max_length=255)
    detail: str = Field(default="", max_length=2000)


class CommitmentIn(_Strict):
    id: Hex = Field(description="16 random bytes chosen by the node, hex")
    hiding: Hex = Field(description="D = d·G, the scheme's point encoding, hex")
    binding: Hex = Field(description="E = e·G, hex")
    signature: Hex = Field(description="the node's identity-key signature of the commitment (API.md §1.13), hex")


class PublishCommitments(_Strict):
    scheme: Literal["ed25519", "secp256k1", "bip340"]
    commitments: list[CommitmentIn] = Field(min_length=1, max_length=256)


class TaskResult(_Strict):
    status: Literal["done", "failed"]
    result: dict[str, Any] | None = None
    error: NodeError | None = None


class AuditIn(_Strict):
    seq: int = Field(ge=0, le=2**63 - 1)
    entry: B64
    hash: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{2}){1,64}$")]
    signature: B64
    #: The identity key (hex) that signed the entry, when not the posting node's current one
    #: (entries written before a restart); default: the posting key.
    signer: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


class AuditPost(_Strict):
    entries: list[AuditIn] = Field(min_length=1, max_length=256)


JobId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Events(_Strict):
    cursors: dict[JobId, Annotated[int, Field(ge=0, le=2**63 - 1)]] = Field(
        default_factory=dict, max_length=256, description="job id → the cursor past which to read (0 = from the start)"
    )
    claim: int = Field(default=0, ge=0, le=64, description="hand out up to this many queued tasks")
    wait: float = Field(default=0.0, ge=0, le=300, description="long-poll: seconds to wait for news")
    admitted: dict[NodeId, Sha256Hex] = Field(
        default_factory=dict,
        max_length=1024,
        description="peer node id → SHA-256 (lower-case hex) of the evidence the node admitted it on: "
        "tasks name such a peer's evidence by that digest instead of repeating it (API.md §1.3)",
    )


class OutboxMessage(OutMessage):
    job: JobId


class OutboxResult(TaskResult):
    task_id: JobId


class Outbox(_Strict):
    messages: list[OutboxMessage] = Field(default_factory=list, max_length=1024)
    results: list[OutboxResult] = Field(default_factory=list, max_length=64)

    def items(
        self,
    ) -> tuple[list[tuple[str, str, int, bytes]], list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]]]:
        """The arguments of ``Coordinator.post_outbox``: messages, then results."""
        msgs = [(m.job, m.to, m.seq, m.blob) for m in self.messages]
        results: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = [
            (r.task_id, r.status, r.result, r.error.model_dump() if r.error is not None else None) for r in self.results
        ]
        return msgs, results


# -- responses (for the OpenAPI document; handlers return plain dicts) ---------------------------
class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class Accepted(_Out):
    request_id: str


class KeyAccepted(_Out):
    key_id: str
    request_id: str


class PartyOut(_Out):
    node_id: str
    index: int


class KeyOut(_Out):
    key_id: str
    scheme: str
    threshold: int
    nodes: list[PartyOut]
    public_key: str | None
    public_package: dict[str, Any] | None
    epoch: int
    status: Literal["pending", "active", "failed"]
    created_at: str
    updated_at: str


class JobError(_Out):
    reason: str
    culprits: list[str]
    party: str | None
    detail: str


class RequestOut(_Out):
    request_id: str
    #: ``bundle``: not a client request but the job that ran several (API.md §1.6, Bundles).
    kind: Literal["dkg", "sign", "presign", "refresh", "repair", "bundle", "witness"]
    key_id: str
    status: Literal["queued", "running", "done", "failed"]
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: JobError | None
    participants: list[dict[str, Any]]
    attempts: int
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    #: The job this sign request ran in, if another: a bundle, or its rerun in rounds (API.md §1.6).
    bundle: str | None = None
    #: A rerun in rounds (API.md §1.6, Reruns): the sign request it runs again.
    carries: str | None = None


class NodeOut(_Out):
    node_id: str
    identity_public_key: str
    kem_id: int
    platform: str
    attestation: dict[str, Any]
    generation: int
    registered_at: str
    last_seen: str
    alive: bool


class TokenOut(_Out):
    token_id: str
    scopes: list[str]
    label: str
    created_at: str
    revoked_at: str | None


class NewToken(TokenOut):
    token: str = Field(description="shown once; only its SHA-256 is stored")


class TaskEnvelope(_Out):
    task: dict[str, Any] | None


class InboxOut(_Out):
    job_id: str
    job_status: str
    messages: list[dict[str, Any]]
    next_after: int


class Counts(_Out):
    accepted: int
    duplicates: int


class EventsOut(_Out):
    tasks: list[dict[str, Any]]
    jobs: list[InboxOut]


class OutboxOut(_Out):
    jobs: dict[str, dict[str, Any]]
    results: dict[str, dict[str, Any]]


class ResultAck(_Out):
    task_status: str
    job_status: str


class Health(_Out):
    status: str
    database: str
    replica_id: str
    version: str
