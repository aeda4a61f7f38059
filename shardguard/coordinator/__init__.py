"""The coordinator: the UNTRUSTED service of ARCHITECTURE §2 and §8.

It queues client requests, hands each participating node its task, relays the nodes' end-to-end
encrypted messages, mirrors their signed audit logs and serves a versioned REST API. It never
holds a secret: it sees opaque ciphertexts and public results only, so it cannot sign or read a
share, only deny service.

Modules: :mod:`.app` (FastAPI factory ``create_app``), :mod:`.server` (``main(argv)``, uvicorn),
:mod:`.wire` (how a node signs its requests; no web framework imported), :mod:`.service`
(queue, relay and job logic on SQLAlchemy), :mod:`.models` and ``migrations/`` (Alembic).
The node-facing API is specified in ``API.md`` beside this file.

This package must never import ``shardguard.protocols``, ``shardguard.local``,
``shardguard.keyfiles`` or ``shardguard.node`` (import-linter contract): it cannot, because it
never holds a secret. Importing the package itself imports nothing heavy, so a node may use
:mod:`.wire`.
"""
