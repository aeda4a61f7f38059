"""Prebuilt Core statements run straight on the DB-API connection, for the hottest paths.

Profiling the coordinator under signing load showed three quarters of its database time in
SQLAlchemy's per-execution machinery (execution context, compiled-cache look-ups, parameter
construction, result proxies) and only a few percent in the database itself. The statements on
the hot paths are fixed, so here each one is compiled **once per dialect** by SQLAlchemy itself —
same SQL, same bind and result type processing (``UTCDateTime``, ``JSON``, PostgreSQL's bind
casts) — and then executed on the pooled DB-API connection with nothing in between.

What this covers is deliberately small: plain parameter binding, ``expanding`` ``IN`` lists,
``RETURNING``, ``FOR UPDATE [SKIP LOCKED]`` (the dialect renders or drops it) and executemany.
Python-side column defaults are not run here, so :meth:`RawConnection.insert` refuses a
statement that would need one (every column is given explicitly by its callers). Driver errors
are re-raised as SQLAlchemy's (``IntegrityError`` …), so callers catch the same exceptions.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Engine
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from shardguard.coordinator.aftercommit import transaction_hooks

__all__ = ["RawConnection", "RawDatabase", "Rows"]

_NO_VALUE = object()
#: Expanded forms kept per statement (one per tuple of IN-list lengths seen).
_MAX_EXPANSIONS = 256


class Rows(list[Any]):
    """A fully fetched result: a list of named rows, with the look-ups callers use."""

    def first(self) -> Any:
        return self[0] if self else None

    def all(self) -> list[Any]:
        return list(self)

    def scalar(self) -> Any:
        return self[0][0] if self else None

    def close(self) -> None:
        pass


class _Prepared(NamedTuple):
    compiled: SQLCompiler
    sql: str
    #: Bind names in the order the driver takes them (positional dialects), or all names.
    names: tuple[str, ...]
    #: Literal values compiled into the statement (``status == "queued"``, ``LIMIT 1`` …).
    literals: Mapping[str, Any]
    bind_procs: Mapping[str, Any]
    #: Per result column: its processor or None; and the row type.
    result_procs: tuple[Any, ...]
    row: type | None
    #: Names of the ``expanding`` (IN-list) binds; empty if there are none.
    expanding: tuple[str, ...]
    #: Expanded forms already built, by the lengths of the expanding lists (see ``_bind``);
    #: None where the plan could not be proven equal to SQLAlchemy's own expansion.
    expansions: dict[tuple[int, ...], _Expansion | None]


class _Expansion(NamedTuple):
    """One statement expanded for given IN-list lengths: the SQL, and where each of the driver's
    values comes from: ``(bind name, index into that bind's list or -1, bind processor)``."""

    sql: str
    plan: tuple[tuple[str, str, int, Any], ...]


def _prepare(stmt: ClauseElement, dialect: Dialect, column_keys: Sequence[str] | None) -> _Prepared:
    compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None)
    if not isinstance(compiled, SQLCompiler):
        raise TypeError(f"rawsql: {type(stmt).__name__} does not compile to a SQL statement")
    literals: dict[str, Any] = {}
    for name, bind in compiled.binds.items():
        if bind.callable is not None:
            raise TypeError(f"rawsql: bind {name!r} has a callable value: not supported")
        if bind.value is not None and not bind.required:
            literals[name] = bind.value
    names = tuple(compiled.positiontup) if compiled.positiontup is not None else tuple(compiled.binds)
    if column_keys is not None:
        given = set(column_keys)
        missing = [n for n in names if n not in given and n not in literals]
        if missing:
            # A Python-side column default would have to be run: give the column explicitly.
            raise TypeError(f"rawsql: no value given for the columns {missing}")
    result_procs: tuple[Any, ...] = ()
    row: type | None = None
    if compiled._result_columns:
        cols = compiled._result_columns
        result_procs = tuple(c[3]._cached_result_processor(dialect, None) for c in cols)
        row = collections.namedtuple("Row", [c[0] for c in cols], rename=True)  # type: ignore[misc,no-redef]
    if compiled.literal_execute_params:
        # Values rendered into the SQL text itself: nothing to reuse, so not supported here.
        raise TypeError("rawsql: literal_execute parameters are not supported")
    expanding = tuple(sorted(compiled.bind_names[b] for b in compiled.post_compile_params))
    return _Prepared(
        compiled, compiled.string, names, literals, dict(compiled._bind_processors), result_procs, row, expanding, {}
    )


def _value(p: _Prepared, params: Mapping[str, Any], name: str) -> Any:
    """The value bound to ``name``: the caller's, else the literal compiled in; never a default."""
    v = params.get(name, _NO_VALUE)
    if v is _NO_VALUE:
        v = p.literals.get(name, _NO_VALUE)
        if v is _NO_VALUE:
            raise TypeError(f"rawsql: no value for bind parameter {name!r}")
    return v


class RawConnection:
    """One transaction's statements (from :meth:`RawDatabase.write` / :meth:`RawDatabase.read`)."""

    def __init__(self, cursor: Any, owner: RawDatabase) -> None:
        self._cur = cursor
        self._owner = owner

    def execute(self, stmt: ClauseElement, params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> Rows:
        """Run ``stmt``; a list of parameter sets runs it once per set (executemany)."""
        if isinstance(params, Sequence):
            if params:
                self._many(self._owner.prepared(stmt, None), stmt, params)
            return Rows()
        return self._one(self._owner.prepared(stmt, None), stmt, params or {})

    def insert(self, stmt: ClauseElement, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """A bare ``insert(Table)`` with the columns each row gives (all rows the same keys)."""
        batch = [rows] if isinstance(rows, Mapping) else list(rows)
        if not batch:
            return
        p = self._owner.prepared(stmt, tuple(sorted(batch[0])))
        self._many(p, stmt, batch)

    def first(self, stmt: ClauseElement, params: Mapping[str, Any] | None = None) -> Any:
        return self.execute(stmt, params).first()

    def scalar(self, stmt: ClauseElement, params: Mapping[str, Any] | None = None) -> Any:
        return self.execute(stmt, params).scalar()

    # -- internals ----------------------------------------------------------------------------
    def _bind(self, p: _Prepared, params: Mapping[str, Any]) -> tuple[str, Any]:
        if p.expanding:
            return self._bind_expanded(p, params)
        out: list[Any] = []
        named: dict[str, Any] = {}
        for n in p.names:
            v = _value(p, params, n)
            proc = p.bind_procs.get(n)
            if proc is not None:
                v = proc(v)
            if self._owner.positional:
                out.append(v)
            else:
                named[n] = v
        return p.sql, (out if self._owner.positional else named)

    def _bind_expanded(self, p: _Prepared, params: Mapping[str, Any]) -> tuple[str, Any]:
        """Bind a statement with IN lists. SQLAlchemy re-renders the SQL on every call
        (``construct_expanded_state``: about a tenth of the coordinator's CPU under load); the
        SQL only depends on the lists' lengths, so each expansion is built by SQLAlchemy once
        per length tuple and kept as a plan, proven on that first call to give exactly
        SQLAlchemy's values."""
        lists = []
        for n in p.expanding:
            v = _value(p, params, n)
            if type(v) not in (list, tuple):
                return self._bind_by_sqlalchemy(p, params)  # a set, a generator …: SQLAlchemy's way
            lists.append(v)
        key = tuple(map(len, lists))
        if key in p.expansions:
            exp = p.expansions[key]
        else:
            exp = self._expansion(p, params)
            if len(p.expansions) < _MAX_EXPANSIONS:
                p.expansions[key] = exp
        if exp is None:
            return self._bind_by_sqlalchemy(p, params)
        values = []
        for _name, src, i, proc in exp.plan:
            v = _value(p, params, src)
            if i >= 0:
                v = v[i]
            values.append(v if proc is None else proc(v))
        if self._owner.positional:
            return exp.sql, values
        return exp.sql, dict(zip((name for name, _, _, _ in exp.plan), values))

    def _expansion(self, p: _Prepared, params: Mapping[str, Any]) -> _Expansion | None:
        state = p.compiled.construct_expanded_state(dict(params))
        procs = {**p.bind_procs, **state.processors}
        if self._owner.positional:
            names = list(state.positiontup or ())
            expected = list(state.positional_parameters)
        else:
            names, expected = list(state.parameters), list(state.parameters.values())
        merged = {**p.literals, **params}
        plan = []
        for name in names:
            base, _, k = name.rpartition("_")
            expanded = base in p.expanding and k.isdigit()
            if expanded == (name in merged):
                return None  # neither, or ambiguous: leave this statement to SQLAlchemy
            src, i = (base, int(k) - 1) if expanded else (name, -1)
            plan.append((name, src, i, procs.get(name)))
        try:
            got = [merged[src] if i < 0 else merged[src][i] for _, src, i, _ in plan]
        except (KeyError, IndexError, TypeError):
            return None
        if len(got) != len(expected) or any(a is not b and a != b for a, b in zip(got, expected)):
            return None
        return _Expansion(state.statement, tuple(plan))

    def _bind_by_sqlalchemy(self, p: _Prepared, params: Mapping[str, Any]) -> tuple[str, Any]:
        state = p.compiled.construct_expanded_state(dict(params))
        procs = {**p.bind_procs, **state.processors}
        if self._owner.positional:
            values = [
                procs[n](v) if procs.get(n) is not None else v
                for n, v in zip(state.positiontup or (), state.positional_parameters)
            ]
            return state.statement, values
        return state.statement, {n: procs[n](v) if procs.get(n) is not None else v for n, v in state.parameters.items()}

    def _one(self, p: _Prepared, stmt: ClauseElement, params: Mapping[str, Any]) -> Rows:
        sql, values = self._bind(p, params)
        try:
            self._cur.execute(sql, values)
            raw = self._cur.fetchall() if p.row is not None else ()
        except self._owner.dbapi.Error as e:
            raise DBAPIError.instance(sql, values, e, self._owner.dbapi.Error) from e
        if p.row is None:
            return Rows()
        procs, row = p.result_procs, p.row
        if not any(procs):
            return Rows(row._make(r) for r in raw)  # type: ignore[attr-defined]
        return Rows(
            row._make([v if f is None else f(v) for f, v in zip(procs, r)])  # type: ignore[attr-defined]
            for r in raw
        )

    def _many(self, p: _Prepared, stmt: ClauseElement, batch: Sequence[Mapping[str, Any]]) -> None:
        if p.expanding:
            for params in batch:
                self._one(p, stmt, params)
            return
        bound = [self._bind(p, params)[1] for params in batch]
        try:
            self._cur.executemany(p.sql, bound)
        except self._owner.dbapi.Error as e:
            raise DBAPIError.instance(p.sql, bound[:1], e, self._owner.dbapi.Error) from e


class RawDatabase:
    """Read and write transactions on raw pooled connections of ``engine``.

    SQLite: the pool's connections run in autocommit mode (``db._sqlite_setup``), so BEGIN
    IMMEDIATE / DEFERRED and COMMIT are issued here, writers queued on ``write_lock`` as in
    :class:`~shardguard.coordinator.db.Database`. PostgreSQL: the driver opens the transaction;
    READ COMMITTED, as on every other path.
    """

    def __init__(self, engine: Engine, write_lock: threading.Lock | None) -> None:
        self._engine = engine
        self.dialect = engine.dialect
        self.sqlite = self.dialect.name == "sqlite"
        self.positional = bool(self.dialect.positional)
        self.dbapi = self.dialect.loaded_dbapi
        self._write_lock = write_lock
        self._prepared: dict[tuple[int, tuple[str, ...] | None], tuple[ClauseElement, _Prepared]] = {}

    def prepared(self, stmt: ClauseElement, column_keys: tuple[str, ...] | None) -> _Prepared:
        key = (id(stmt), column_keys)
        hit = self._prepared.get(key)
        if hit is not None and hit[0] is stmt:
            return hit[1]
        p = _prepare(stmt, self.dialect, column_keys)
        self._prepared[key] = (stmt, p)  # the statement is kept alive, so its id stays unique
        return p

    @contextlib.contextmanager
    def write(self) -> Iterator[RawConnection]:
        """As :meth:`Database.write <shardguard.coordinator.db.Database.write>`, commit hooks included."""
        if self._write_lock is None:
            with transaction_hooks(), self._transaction("") as conn:
                yield conn
            return
        with transaction_hooks(), self._write_lock, self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[RawConnection]:
        with self._transaction("BEGIN" if self.sqlite else "") as conn:
            yield conn

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[RawConnection]:
        raw = self._engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                if begin:
                    try:
                        cur.execute(begin)
                    except self.dbapi.Error as e:
                        raise DBAPIError.instance(begin, (), e, self.dbapi.Error) from e
                try:
                    yield RawConnection(cur, self)
                except BaseException:
                    with contextlib.suppress(self.dbapi.Error):
                        if self.sqlite:
                            cur.execute("ROLLBACK")
                        else:
                            raw.rollback()
                    raise
                try:
                    if self.sqlite:
                        cur.execute("COMMIT")
                    else:
                        raw.commit()
                except self.dbapi.Error as e:
                    raise DBAPIError.instance("COMMIT", (), e, self.dbapi.Error) from e
            finally:
                cur.close()
        finally:
            raw.close()  # back to the pool (which resets it)
