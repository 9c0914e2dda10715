"""SQLite session store: embedded, no extra process. WAL journal with synchronous=FULL, so a committed
snapshot survives a crash of the process or the machine. All I/O runs on one dedicated thread (SQLite
connections belong to a thread), never on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from seedance.sessions.snapshot import Snapshot, decode_snapshot, encode_snapshot

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    turn INTEGER NOT NULL,
    updated REAL NOT NULL,
    data BLOB NOT NULL
)
"""


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-sqlite")
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None)  # autocommit: each write is a transaction
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _save(self, snapshot: Snapshot) -> None:
        self._connect().execute(
            "INSERT INTO sessions (session_id, turn, updated, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(session_id) DO UPDATE SET turn=excluded.turn, updated=excluded.updated, data=excluded.data "
            "WHERE excluded.turn >= sessions.turn",
            (snapshot.session_id, snapshot.turn, snapshot.timestamp, encode_snapshot(snapshot)),
        )

    def _load(self, session_id: str) -> Snapshot | None:
        row = self._connect().execute("SELECT data FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        return decode_snapshot(row[0]) if row else None

    def _delete(self, session_id: str) -> None:
        self._connect().execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    async def save(self, snapshot: Snapshot) -> None:
        await self._run(self._save, snapshot)

    async def load(self, session_id: str) -> Snapshot | None:
        return await self._run(self._load, session_id)

    async def delete(self, session_id: str) -> None:
        await self._run(self._delete, session_id)

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(close)
        self._executor.shutdown(wait=True)
