"""The results store: one SQLite file per output folder, one row per finished run.

Why SQLite: a run is recorded in one transaction when it ends, so a sweep killed at any moment (even by
SIGKILL) leaves every finished run readable and loses only the runs in flight; WAL mode lets several sweeps
(or a report) read and write the same file at once; ``UNIQUE (config_hash, seed)`` means a run is never
recorded twice, however many sweeps race to finish it.

Each row holds the full run config (JSON), the seed, per-epoch curves (JSON lists), the final errors, the
diverged flag, wall time, and where it came from: code version, library versions, hardware.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import OPTIMIZERS, RunConfig, SweepConfig
from .files import atomic_write, write_text_atomic
from .train import RunRecord

__all__ = ["SCHEMA_VERSION", "Store", "StoreError", "CSV_COLUMNS", "damaged_file", "read_json", "write_json"]

SCHEMA_VERSION = 1
STORE_FILENAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at   TEXT NOT NULL,               -- UTC, ISO 8601
    config       TEXT NOT NULL,               -- SweepConfig as JSON
    code_version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    config_hash      TEXT    NOT NULL,        -- RunConfig.key()
    seed             INTEGER NOT NULL,
    optimizer        TEXT    NOT NULL,        -- adam | adamw | sgd | sgdw
    decay            TEXT    NOT NULL,        -- the library's convention: l2 | decoupled
    lr               REAL    NOT NULL,        -- alpha
    weight_decay     REAL    NOT NULL,        -- lambda, in the convention's units
    config           TEXT    NOT NULL,        -- RunConfig as JSON
    train_loss       TEXT    NOT NULL,        -- JSON list, mean cross-entropy per epoch (nats)
    val_error        TEXT    NOT NULL,        -- JSON list, fraction per epoch
    test_error       TEXT    NOT NULL,        -- JSON list, fraction per epoch
    final_val_error  REAL,                    -- NULL when diverged
    final_test_error REAL,                    -- NULL when diverged
    diverged         INTEGER NOT NULL,        -- 1 when the training loss became NaN/inf
    epochs_run       INTEGER NOT NULL,
    wall_time_s      REAL    NOT NULL,
    device           TEXT    NOT NULL,
    code_version     TEXT    NOT NULL,
    library_versions TEXT    NOT NULL,        -- JSON object
    hardware         TEXT    NOT NULL,        -- JSON object
    extra            TEXT    NOT NULL,        -- JSON object (parameter count, steps per epoch)
    finished_at      TEXT    NOT NULL,        -- UTC, ISO 8601
    UNIQUE (config_hash, seed)
);
"""

# Runs that failed (raised, or their worker died). Not runs: the next sweep retries them, and the report lists
# those that no later attempt finished. Created on the first failure, so stores without one stay as they were.
_FAILURES_SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    config_hash TEXT    NOT NULL,             -- RunConfig.key()
    seed        INTEGER NOT NULL,
    optimizer   TEXT    NOT NULL,
    lr          REAL    NOT NULL,
    weight_decay REAL   NOT NULL,
    error       TEXT    NOT NULL,             -- one line
    details     TEXT    NOT NULL,             -- the traceback, when there is one
    failed_at   TEXT    NOT NULL              -- UTC, ISO 8601
)
"""

_JSON_COLUMNS = ("config", "train_loss", "val_error", "test_error", "library_versions", "hardware", "extra")

CSV_COLUMNS = (
    "id", "optimizer", "decay", "lr", "weight_decay", "seed", "final_val_error", "final_test_error", "diverged",
    "epochs_run", "wall_time_s", "device", "config_hash", "code_version", "finished_at",
    "train_loss", "val_error", "test_error", "config", "library_versions", "hardware",
)  # fmt: skip


class StoreError(RuntimeError):
    """A store that cannot be used (not SQLite, not ours, another schema version, damaged, or a write that failed:
    a full disk, a read-only folder); one-line message."""


def _recovery(path: Path) -> str:
    """How to get on after a damaged store: copy out what it still holds (the sqlite3 shell's .recover), or move
    it away and start afresh."""
    return (
        f"it was left unchanged: copy out what is readable with `sqlite3 {path} .recover | sqlite3 recovered.sqlite`"
        f", or move it away and run again to start afresh"
    )


def _delete_row(path: Path, row_id: Any) -> str:
    return f"`sqlite3 {path} 'DELETE FROM runs WHERE id = {row_id}'`"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The kinds of value a stored run's columns hold: (test, what it is, for the message).
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "text": (lambda v: isinstance(v, str), "text"),
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "finite": (lambda v: _is_number(v) and math.isfinite(v), "a finite number"),
    "flag": (lambda v: v in (0, 1) and not isinstance(v, float), "0 or 1"),
    "object": (lambda v: isinstance(v, dict), "a JSON object"),
    "numbers": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a JSON list of numbers"),
}
# What each column of a stored run must hold for the analysis to read it: a store edited by hand, or written by
# another program, can hold anything (SQLite checks no types). Curves may hold NaN (a point not measured).
_ROW_KINDS: dict[str, str] = {
    "config_hash": "text", "seed": "count", "optimizer": "text", "decay": "text", "lr": "finite",
    "weight_decay": "finite", "config": "object", "train_loss": "numbers", "val_error": "numbers",
    "test_error": "numbers", "diverged": "flag", "epochs_run": "count", "wall_time_s": "finite", "device": "text",
    "code_version": "text", "library_versions": "object", "hardware": "object", "extra": "object",
    "finished_at": "text",
}  # fmt: skip


def _value_problem(value: Any, kind: str) -> str | None:
    """Why ``value`` is not of ``kind`` (a key of _KINDS), or None."""
    test, wanted = _KINDS[kind]
    if test(value):
        return None
    return f"{wanted}, got {'NULL' if value is None else repr(value)[:40]}"


def _row_problem(row: dict[str, Any]) -> str | None:
    """Why a stored run (JSON columns decoded) cannot be read by the analysis, or None when it can."""
    for column, kind in _ROW_KINDS.items():
        problem = _value_problem(row.get(column), kind)
        if problem is not None:
            return f"{column} must be {problem}"
    train = row["config"].get("train")
    if not isinstance(train, dict) or _value_problem(train.get("epochs"), "count") or train["epochs"] < 1:
        return "config.train.epochs must be an integer >= 1"
    if not row["diverged"]:  # a diverged run's final errors are NULL and never read (it counts as 100% error)
        for column in ("final_val_error", "final_test_error"):
            if not (_is_number(row[column]) and math.isfinite(row[column])):
                value = "NULL" if row[column] is None else repr(row[column])
                return f"{column} is {value} in a run that did not diverge (a finite number was expected)"
    return None


def _decoded(row: sqlite3.Row) -> tuple[dict[str, Any], str | None]:
    """A stored run as a dict with its JSON columns decoded, and why it cannot be read (None: it can)."""
    item = dict(row)
    for column in _JSON_COLUMNS:
        try:
            item[column] = json.loads(item[column])
        except (TypeError, ValueError) as error:
            return item, f"{column} is not JSON ({error})"
    return item, _row_problem(item)


def damaged_file(path: Path, problem: str) -> StoreError:
    """The error for a file of an output folder that does not hold what it should (the message names it)."""
    return StoreError(
        f"{str(path)!r} is damaged ({problem}); it was left unchanged: restore it, or move its folder away and run "
        "again to start afresh"
    )


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; a StoreError naming the file when it cannot be read or is not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise damaged_file(path, "not UTF-8 text") from None
    except OSError as error:
        raise StoreError(f"cannot read {str(path)!r}: {error.strerror or error}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise damaged_file(path, f"not JSON: {error}") from None


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` atomically: a reader (or a crash) never sees half a file."""
    write_text_atomic(path, json.dumps(value, indent=1) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """A handle on ``results.sqlite`` in an output folder. Open it with :meth:`open`; close it with
    :meth:`close` (or use it as a context manager). Every write is one short transaction."""

    def __init__(self, path: Path, connection: sqlite3.Connection):
        self.path = path
        self._db = connection

    # -------------------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, folder: str | Path, *, create: bool = True) -> "Store":
        """Open (and with ``create``, make) the store of output folder ``folder``; check its schema version and
        its integrity. An existing file is never initialized: a store is created whole, or refused."""
        folder = Path(folder)
        path = folder / STORE_FILENAME
        if not path.exists() and not create:
            raise StoreError(f"no results store in {str(folder)!r} (expected {STORE_FILENAME}; run a sweep first)")
        if create:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot create output folder {str(folder)!r}: {error.strerror or error}") from None
            if not path.exists():
                _create(path)
        if path.is_file() and path.stat().st_size == 0:
            raise StoreError(
                f"{str(path)!r} is empty (0 bytes), not a results store; it was left unchanged: it holds no runs, "
                "so delete it (or move it away) and run again"
            )
        try:
            # timeout: wait up to 60 s for another writer's transaction (each lasts milliseconds).
            connection = sqlite3.connect(path, timeout=60.0, isolation_level=None)
            connection.row_factory = sqlite3.Row
        except sqlite3.Error as error:
            raise StoreError(f"cannot open {str(path)!r}: {error}") from None
        store = cls(path, connection)
        try:
            store._check()
        except sqlite3.Error as error:
            connection.close()
            if "unable to open" in str(error) or "readonly" in str(error):
                raise StoreError(f"cannot open {str(path)!r}: {error} (is its folder writable?)") from None
            raise StoreError(
                f"{str(path)!r} is not a readable results store (damaged, or not SQLite: {error}); {_recovery(path)}"
            ) from None
        except BaseException:
            connection.close()
            raise
        return store

    def _check(self) -> None:
        """Refuse a file that is not ours, is of another schema version, or is damaged; write nothing to it."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            raise StoreError(f"{str(self.path)!r} is an SQLite file but not a decoupled results store")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        found = row[0] if row else "none"
        if found != str(SCHEMA_VERSION):
            raise StoreError(
                f"{str(self.path)!r} was written with store schema version {found}; this version of decoupled "
                f"reads version {SCHEMA_VERSION}: use another --out folder (the file was left unchanged)"
            )
        # A damaged page (a disk error, a copy cut short) must stop us here, before a sweep writes into the file.
        # quick_check reads every page: milliseconds for a sweep's store.
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreError(f"{str(self.path)!r} is damaged ({'; '.join(problems)[:200]}); {_recovery(self.path)}")
        self._db.execute("PRAGMA synchronous = FULL")  # a committed run survives power loss too

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction. A failed write (a full disk, a read-only file) is a StoreError naming the file;
        everything committed before it stays."""
        try:
            # BEGIN IMMEDIATE takes the write lock up front, so two writers queue instead of deadlocking.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as error:
            if isinstance(error, (sqlite3.ProgrammingError, sqlite3.IntegrityError)):
                raise  # a bug here, not the disk
            if self._db.in_transaction:
                # The rollback may fail for the same reason as the write; it commits nothing either way.
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise StoreError(
                f"cannot write to {str(self.path)!r}: {error}; the runs recorded before are kept"
            ) from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------- writing

    def add_sweep(self, config: SweepConfig, code_version: str) -> int:
        """Record that a sweep with ``config`` started; the report draws the latest sweep's grids."""
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO sweeps (started_at, config, code_version) VALUES (?, ?, ?)",
                (_now(), json.dumps(config.to_dict()), code_version),
            )
        return int(cursor.lastrowid or 0)

    def add_run(self, record: RunRecord) -> bool:
        """Record a finished run in one transaction; False if (config, seed) was already recorded."""
        config = record.config
        provenance = record.provenance
        values = {
            "config_hash": config.key(),
            "seed": record.seed,
            "optimizer": config.optimizer,
            "decay": OPTIMIZERS[config.optimizer].decay,
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "config": json.dumps(config.to_dict(), sort_keys=True),
            "train_loss": json.dumps(record.train_loss),
            "val_error": json.dumps(record.val_error),
            "test_error": json.dumps(record.test_error),
            "final_val_error": record.final_val_error,
            "final_test_error": record.final_test_error,
            "diverged": int(record.diverged),
            "epochs_run": len(record.train_loss),
            "wall_time_s": record.wall_time_s,
            "device": record.device,
            "code_version": provenance.get("code_version", "unknown"),
            "library_versions": json.dumps(provenance.get("library_versions", {}), sort_keys=True),
            "hardware": json.dumps(provenance.get("hardware", {}), sort_keys=True),
            "extra": json.dumps(record.extra, sort_keys=True),
            "finished_at": _now(),
        }
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._transaction():
            cursor = self._db.execute(
                f"INSERT OR IGNORE INTO runs ({columns}) VALUES ({marks})", tuple(values.values())
            )
        return cursor.rowcount == 1

    def add_failure(self, config: RunConfig, seed: int, error: str, details: str = "") -> None:
        """Record that the run (``config``, ``seed``) failed with ``error`` (one line) in one transaction."""
        with self._transaction():
            self._db.execute(_FAILURES_SCHEMA)
            self._db.execute(
                "INSERT INTO failures (config_hash, seed, optimizer, lr, weight_decay, error, details, failed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (config.key(), seed, config.optimizer, config.lr, config.weight_decay, error, details, _now()),
            )

    # --------------------------------------------------------------------------------------------- reading

    def failures(self) -> list[dict[str, Any]]:
        """The latest failure of every run that failed and has not been recorded since, oldest first."""
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'failures'").fetchone():
            return []
        query = (
            "SELECT * FROM failures WHERE id IN (SELECT MAX(id) FROM failures GROUP BY config_hash, seed) "
            "AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.config_hash = failures.config_hash "
            "AND runs.seed = failures.seed) ORDER BY id"
        )
        return [dict(row) for row in self._db.execute(query)]

    def finished_keys(self) -> set[tuple[str, int]]:
        """(config hash, seed) of every recorded run."""
        return {(row[0], row[1]) for row in self._db.execute("SELECT config_hash, seed FROM runs")}

    def runs(self) -> list[dict[str, Any]]:
        """Every recorded run as a dict, JSON columns decoded, oldest first. A row that the analysis cannot
        read (edited by hand, or written by another program: a NULL final error, JSON that does not parse) is
        a StoreError naming the file, the row and what is wrong, before any number is computed from it."""
        rows, damaged = [], []
        for row in self._db.execute("SELECT * FROM runs ORDER BY id"):
            item, problem = _decoded(row)
            if problem is not None:
                damaged.append((item.get("id"), problem))
                continue
            item["diverged"] = bool(item["diverged"])
            rows.append(item)
        if damaged:
            (row_id, problem), more = damaged[0], len(damaged) - 1
            others = f" ({more} more damaged rows: {', '.join(str(i) for i, _ in damaged[1:6])})" if more else ""
            raise StoreError(
                f"{str(self.path)!r}: run row {row_id} is damaged ({problem}){others}; the store was left unchanged: "
                f"delete the row ({_delete_row(self.path, row_id)}) and run the same sweep again to redo that run"
            )
        return rows

    def latest_sweep(self) -> SweepConfig | None:
        """The config of the latest sweep recorded (the report draws its grids); a StoreError naming the file when
        it cannot be read here (edited, or written by another version: an optimizer this version does not know)."""
        row = self._db.execute("SELECT id, config, code_version FROM sweeps ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        try:
            return SweepConfig.from_dict(json.loads(row["config"]))
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            problem = f"{type(error).__name__}: {error}" if isinstance(error, KeyError) else str(error)
            raise StoreError(
                f"{str(self.path)!r}: the config of its latest sweep (row {row['id']}, written by "
                f"{row['code_version']}) cannot be read by this version of decoupled ({problem}); the store was left "
                "unchanged: report it with the version that wrote it, or run the sweep again with this one (it "
                "records its config anew; no stored run is repeated)"
            ) from None

    def export_csv(self, path: str | Path, rows: list[dict[str, Any]] | None = None) -> int:
        """Write every run as one CSV row (curves and metadata as JSON strings), atomically; return the count.
        ``rows``: what :meth:`runs` returned, for a caller that has just read them (else they are read here)."""
        path = Path(path)
        rows = self.runs() if rows is None else rows
        try:
            with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(CSV_COLUMNS)
                for row in rows:
                    writer.writerow(
                        json.dumps(row[c], sort_keys=True) if c in _JSON_COLUMNS else
                        ("" if row[c] is None else int(row[c]) if c == "diverged" else row[c])
                        for c in CSV_COLUMNS
                    )  # fmt: skip
        except OSError as error:
            raise StoreError(
                f"cannot write {str(path)!r}: {error.strerror or error} (the runs are safe in {self.path.name})"
            ) from None
        return len(rows)


def _create(path: Path) -> None:
    """Make a store file whole: build the schema in a temporary file beside ``path``, check it, and link it into
    place.

    So ``path`` never exists half made (a 0-byte or schema-less file is refused, never filled in), and of two
    sweeps creating one store at once, one links its file and the other opens that one. The schema is written in
    SQLite's rollback-journal mode, where the commit writes the file itself (a full disk fails the commit), and
    only then switched to WAL: a WAL commit reaches the file at a checkpoint when the connection closes, which
    fails silently on a full disk and left a damaged file behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".sqlite", dir=path.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?), ('created_at', ?)",
                (str(SCHEMA_VERSION), _now()),
            )
            db.execute("COMMIT")
            # Readers never block the writer, and vice versa (kept in the file).
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        finally:
            db.close()
        if mode != "wal" or not _is_whole(tmp):
            raise sqlite3.OperationalError("the new store could not be written whole")
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)  # no overwrite: if another sweep made the store meanwhile, that one is used
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: a rename, which is atomic too
            if not path.exists():
                os.replace(tmp, path)
    except sqlite3.Error as error:
        raise StoreError(f"cannot create {str(path)!r}: {error}{_full_disk_hint(path.parent)}") from None
    except OSError as error:
        raise StoreError(f"cannot create {str(path)!r}: {error.strerror or error}") from None
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _is_whole(file: str) -> bool:
    """Whether the store just built in ``file`` reads back whole: its pages check out and it has its schema."""
    try:
        with closing(sqlite3.connect(file, isolation_level=None)) as db:
            checked = [row[0] for row in db.execute("PRAGMA quick_check")]
            version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error:
        return False
    return checked == ["ok"] and version is not None and version[0] == str(SCHEMA_VERSION)


def _full_disk_hint(folder: Path) -> str:
    """The words " (no space left on device)" when the folder's filesystem is (nearly) full, which SQLite reports
    as a full database or as a disk I/O error; else the empty string."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return " (no space left on device)" if free < _STORE_ROOM else ""


_STORE_ROOM = 1 << 20  # bytes: a new store and its first runs fit in far less; below it, the disk is full
