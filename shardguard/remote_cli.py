"""CLI commands that talk to a running coordinator (issue 6): ``keys``, ``sign``/``refresh``
with ``--coordinator``, ``nodes``, ``requests``, ``audit``.

The coordinator URL comes from ``--coordinator`` or ``$SHARDGUARD_COORDINATOR``; the API token
from ``$SHARDGUARD_TOKEN`` (never a command-line argument: it would show in ``ps``), or both
from a development cluster's directory with ``--dev DIR`` (``shardguard dev up``). Output is
JSON. Errors print one line and exit 2 (usage, API refusal) or 1 (the request ran and failed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shardguard.client import ApiError, Client, RequestFailed, TransportError

__all__ = ["COMMANDS", "main", "wants_remote"]

COMMANDS = ("keys", "nodes", "requests", "audit")


def wants_remote(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a remote command (``sign``/``refresh`` only with a coordinator)."""
    if not argv:
        return False
    if argv[0] in COMMANDS:
        return True
    return argv[0] in ("sign", "refresh") and any(a.split("=")[0] in ("--coordinator", "--dev") for a in argv[1:])


def _connect(args: argparse.Namespace) -> Client:
    url, token = args.coordinator or os.environ.get("SHARDGUARD_COORDINATOR"), os.environ.get("SHARDGUARD_TOKEN")
    if args.dev:
        cluster = json.loads((Path(args.dev) / "cluster.json").read_text())
        url, token = url or cluster["url"], token or cluster["token"]
    if not url:
        raise ValueError("no coordinator: pass --coordinator URL, set $SHARDGUARD_COORDINATOR, or use --dev DIR")
    if not token:
        raise ValueError("no API token: set $SHARDGUARD_TOKEN (or use --dev DIR for a development cluster)")
    return Client(url, token)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shardguard", description="Commands against a ShardGuard coordinator.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--coordinator", metavar="URL", help="coordinator base URL (default $SHARDGUARD_COORDINATOR)")
    common.add_argument("--dev", metavar="DIR", help="use the development cluster in DIR (URL and token from cluster.json)")
    sub = p.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="create, list and show keys", parents=[common])
    ks = keys.add_subparsers(dest="action", required=True)
    kc = ks.add_parser("create", help="attested DKG among the given nodes", parents=[common])
    kc.add_argument("--scheme", required=True, choices=["ecdsa", "ed25519", "secp256k1", "bip340"])
    kc.add_argument("--threshold", "-t", type=int, required=True)
    kc.add_argument("--nodes", required=True, help="comma-separated node ids; party i is the i-th")
    kc.add_argument("--no-wait", action="store_true")
    ks.add_parser("list", parents=[common])
    kshow = ks.add_parser("show", parents=[common])
    kshow.add_argument("key_id")
    s = sub.add_parser("sign", help="sign through the coordinator", parents=[common])
    s.add_argument("--key-id", required=True)
    s.add_argument("--digest-hex", help="ecdsa: the 32-byte digest")
    s.add_argument("--message-hex", help="FROST schemes: the message")
    s.add_argument("--path", help="non-hardened BIP32 path (ecdsa keys only)")
    s.add_argument("--signers", help="comma-separated node ids (default: chosen by the coordinator)")
    s.add_argument("--json", action="store_true", help="accepted for symmetry with local mode (output is always JSON)")
    r = sub.add_parser("refresh", help="proactive refresh of a key's shares", parents=[common])
    r.add_argument("--key-id", required=True)
    r.add_argument("--json", action="store_true")
    sub.add_parser("nodes", help="registered nodes and their attestation summary", parents=[common])
    rq = sub.add_parser("requests", help="show a request", parents=[common])
    rq.add_argument("request_id")
    sub.add_parser("audit", help="the audit mirror", parents=[common])
    return p


def _run(args: argparse.Namespace, c: Client) -> Any:
    if args.command == "keys":
        if args.action == "create":
            return c.create_key(args.scheme, args.threshold, args.nodes.split(","), wait=not args.no_wait)
        return c.keys() if args.action == "list" else c.key(args.key_id)
    if args.command == "sign":
        signers = args.signers.split(",") if args.signers else None
        digest = bytes.fromhex(args.digest_hex) if args.digest_hex else None
        message = bytes.fromhex(args.message_hex) if args.message_hex else None
        return c.sign(args.key_id, digest=digest, message=message, path=args.path, signers=signers)
    if args.command == "refresh":
        return c.refresh(args.key_id)
    if args.command == "nodes":
        return c.nodes()
    if args.command == "requests":
        return c.request(args.request_id)
    return c.audit()


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        with _connect(args) as c:
            print(json.dumps(_run(args, c), indent=2))
        return 0
    except RequestFailed as e:
        print(f"shardguard: {e}", file=sys.stderr)
        return 1
    except (ApiError, ValueError, OSError, TransportError) as e:
        print(f"shardguard: error: {e}", file=sys.stderr)
        return 2
