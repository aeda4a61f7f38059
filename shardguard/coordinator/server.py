"""``shardguard coordinator …``: run the coordinator under uvicorn, and manage API tokens.

``main(argv)`` takes the arguments after ``shardguard coordinator``::

    run [--db URL|PATH] [--host 127.0.0.1] [--port 8750] [--job-timeout S] [--log-level info]
    token create --scopes admin[,read,…] [--label TEXT] [--db URL|PATH]   # prints the token once
    token list [--db URL|PATH]
    token revoke TOKEN_ID [--db URL|PATH]
    migrate [--db URL|PATH]

With no sub-command, ``run`` is meant (``python -m shardguard.coordinator.server --port 0``).
``--port 0`` picks a free port; the first line on stdout is always
``shardguard coordinator listening on http://HOST:PORT``. ``SHARDGUARD_BOOTSTRAP_TOKEN`` in the
environment is accepted as an admin token (never pass secrets on the command line).
Exit status: 0 on a clean stop, 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardguard.coordinator.settings import MAX_JOB_TIMEOUT, check_job_timeout

if TYPE_CHECKING:
    from shardguard.coordinator.settings import Settings

__all__ = ["main"]

DEFAULT_PORT = 8750
BOOTSTRAP_ENV = "SHARDGUARD_BOOTSTRAP_TOKEN"


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        default=os.environ.get("SHARDGUARD_COORDINATOR_DB"),
        help="postgresql://user@host:port/db, sqlite:///file, or a file path (default: "
        "$SHARDGUARD_COORDINATOR_DB or ./shardguard-coordinator.sqlite3)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shardguard coordinator", description="The untrusted ShardGuard coordinator service.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the API (uvicorn)")
    _db_args(run)
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    run.add_argument("--job-timeout", type=_job_timeout, default=None, metavar="S",
                     help=f"seconds a job may run (default 120, at most {MAX_JOB_TIMEOUT:g})")  # fmt: skip
    run.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    run.add_argument("--replica-id", default=None, help="name of this replica (default: random)")

    tok = sub.add_parser("token", help="manage API tokens")
    tsub = tok.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="create a token and print it once")
    _db_args(create)
    create.add_argument("--scopes", required=True, help="comma-separated: keys:write, sign:write, read, nodes:register, admin")
    create.add_argument("--label", default="")
    lst = tsub.add_parser("list", help="list tokens (never their secrets)")
    _db_args(lst)
    revoke = tsub.add_parser("revoke", help="revoke a token")
    _db_args(revoke)
    revoke.add_argument("token_id")

    mig = sub.add_parser("migrate", help="apply the database migrations and exit")
    _db_args(mig)
    return p


def _settings(db: str | None, **overrides: Any) -> Settings:
    """Settings for ``--db`` (a URL, or a path to an SQLite file) and the given overrides."""
    from shardguard.coordinator.settings import Settings

    if db is not None and "://" in db:
        overrides["db_url"] = db
    elif db is not None:
        overrides["sqlite_path"] = Path(db)
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``shardguard coordinator``; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list = ["run", *args_list]
    args = _parser().parse_args(args_list)

    try:
        if args.command == "run":
            return _run(args)
        if args.command == "migrate":
            from shardguard.coordinator.db import Database, migrate

            db = Database(_settings(args.db).database_url())
            migrate(db)
            db.dispose()
            print("database is at the latest schema")
            return 0
        return _token(args, _settings(args.db))
    except Exception as e:  # configuration errors (unreachable database…): one line, exit 2
        print(f"shardguard coordinator: error: {e}", file=sys.stderr)
        return 2


def _token(args: argparse.Namespace, settings: Settings) -> int:
    from shardguard.coordinator.db import Database, migrate
    from shardguard.coordinator.metrics import Metrics
    from shardguard.coordinator.service import SCOPES, Coordinator

    db = Database(settings.database_url())
    try:
        migrate(db)
        coord = Coordinator(settings, db, Metrics(), lambda _key, _n: None)
        if args.action == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            bad = [s for s in scopes if s not in SCOPES]
            if bad or not scopes:
                print(f"shardguard coordinator: error: unknown scope(s) {bad}; choose from {', '.join(SCOPES)}", file=sys.stderr)
                return 2
            out, token = coord.create_token(scopes, args.label)
            print(json.dumps({**out, "token": token}))
            print("the token is shown once; only its SHA-256 is stored", file=sys.stderr)
        elif args.action == "list":
            print(json.dumps(coord.list_tokens(), indent=2))
        else:
            print(json.dumps(coord.revoke_token(args.token_id)))
        return 0
    finally:
        db.dispose()


def _job_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    try:
        check_job_timeout(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from shardguard.coordinator.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kwargs: dict[str, Any] = {}
    if args.job_timeout is not None:
        kwargs["job_timeout"] = args.job_timeout
    if args.replica_id:
        kwargs["replica_id"] = args.replica_id
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    if bootstrap:
        kwargs["bootstrap_token"] = bootstrap
    settings = _settings(args.db, **kwargs)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every keep-alive answer waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    host, port = sock.getsockname()[:2]
    app = create_app(settings)  # opens the database and migrates it before we announce
    # What exists now (modules, the app) lives as long as the process: full garbage collections
    # need not scan it again and again (each took 20-70 ms under load, bench/README).
    gc.freeze()
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"shardguard coordinator listening on http://{shown}:{port}", flush=True)
    # websockets' sans-I/O protocol for the node event streams (coordinator/stream.py); a frame
    # larger than a request body is refused by the protocol before it is buffered whole.
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
        lifespan="on",
        ws="websockets-sansio",
        ws_max_size=settings.max_body_bytes + 64,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
