"""Which of CPython's ``test_sqlite3`` tests dqlitepy does not run, and why.

Keys are test ids relative to the ``test.test_sqlite3`` package: a whole class
(``"test_dbapi.BlobTests"``) or one test (``"test_dbapi.OpenTests.test_open_uri"``).
An excluded test is reported as skipped with its reason, never as passed.  Every
exclusion names a difference that follows from running SQL on a dqlite server
instead of in-process SQLite; ``docs/sqlite3-compatibility.md`` explains each.

``ISOLATED`` tests are not excluded: they run, each in a fresh process with an
empty data directory, because they rely on state that a dqlite client cannot
reset (see the reason).
"""

from __future__ import annotations

_NOT_A_PATH = (
    "database names are not file paths: a dqlite database is a name inside the node's "
    "data directory, so {what}"
)
_NUL_TEXT = (
    "text containing NUL: the dqlite wire protocol encodes TEXT as a NUL-terminated "
    "string, so such text can be neither sent nor received"
)
_CALLBACK = (
    "{what}: SQL runs on the server, which cannot call back into the client's Python "
    "code; dqlitepy raises NotSupportedError"
)
_USER_FUNCTION = (
    "create_function: SQL runs on the server, so a Python function registered on the "
    "client cannot be called from SQL (it fails with 'no such function')"
)

#: test id (or class id) -> why dqlitepy does not run it.
EXCLUDED: dict[str, str] = {
    # -- test_dbapi ----------------------------------------------------------------------
    "test_dbapi.BlobTests": (
        "blob I/O (Connection.blobopen, sqlite3.Blob) is not in the dqlite protocol; "
        "blobopen() raises NotSupportedError"
    ),
    "test_dbapi.SerializeTests": (
        "serialize()/deserialize(): a replicated database is not replaced by one client "
        "(deserialize), and its files are fetched with dqlitepy.Client.dump(); both raise "
        "NotSupportedError"
    ),
    "test_dbapi.ModuleTests.test_disallow_instantiation": (
        "checks that sqlite3.Blob cannot be instantiated; there is no Blob type, as blob "
        "I/O is not in the dqlite protocol"
    ),
    "test_dbapi.ModuleTests.test_error_code_on_exception": _NOT_A_PATH.format(
        what="connecting to a directory's path opens a database instead of failing with "
        "SQLITE_CANTOPEN"
    ),
    "test_dbapi.ConnectionTests.test_failed_open": _NOT_A_PATH.format(
        what="a path inside a missing directory opens a database instead of failing"
    ),
    "test_dbapi.ConnectionTests.test_connection_bad_reinit": _NOT_A_PATH.format(
        what="re-initialising a connection with a directory's path cannot make it fail"
    ),
    "test_dbapi.OpenTests.test_open_with_path_like_object": _NOT_A_PATH.format(
        what="no file appears at the path given to connect()"
    ),
    "test_dbapi.OpenTests.test_open_with_undecodable_path": _NOT_A_PATH.format(
        what="no file appears at the path given to connect()"
    ),
    "test_dbapi.OpenTests.test_open_uri": _NOT_A_PATH.format(
        what="no file appears at the path of a file: URI"
    ),
    "test_dbapi.OpenTests.test_open_unquoted_uri": _NOT_A_PATH.format(
        what="no file appears at the path of a file: URI"
    ),
    "test_dbapi.OpenTests.test_open_undecodable_uri": _NOT_A_PATH.format(
        what="no file appears at the path of a file: URI"
    ),
    "test_dbapi.OpenTests.test_open_uri_readonly": _NOT_A_PATH.format(
        what="no file appears at the path; and dqlite has no read-only open "
        "(?mode=ro): every connection reads and writes through the leader"
    ),
    "test_dbapi.CursorTests.test_execute_arg_string_with_zero_byte": _NUL_TEXT,
    "test_dbapi.MultiprocessTests.test_ctx_mgr_rollback_if_commit_failed": (
        "a child process opens the same file with the standard library's sqlite3 and "
        "calls a Python function from SQL (create_function) to hold the lock; a dqlite "
        "database is neither that file nor able to call client functions"
    ),
    # -- test_types ----------------------------------------------------------------------
    "test_types.SqliteTypeTests.test_string_with_null_character": _NUL_TEXT,
    # -- test_factory --------------------------------------------------------------------
    "test_factory.TextFactoryTestsWithEmbeddedZeroBytes": _NUL_TEXT
    + " (setUp inserts 'a\\x00b')",
    # -- test_regression -----------------------------------------------------------------
    "test_regression.RegressionTests.test_collation": _CALLBACK.format(
        what="create_collation (the test checks the collation name's encoding)"
    ),
    "test_regression.RegressionTests.test_bpo37347": _CALLBACK.format(
        what="set_progress_handler and set_authorizer"
    ),
    "test_regression.RegressionTests.test_error_msg_decode_error": (
        "TEXT that is not valid UTF-8: dqlitepy's server reads rows through APSW, which "
        "cannot return such text, so the query fails on the server with OperationalError "
        "'text value is not valid UTF-8', not sqlite3's 'Could not decode to UTF-8 column "
        "...' (against C dqlite, which sends the bytes, the driver raises sqlite3's message)"
    ),
    "test_regression.RegressionTests.test_executescript_step_through_select": _USER_FUNCTION,
    "test_regression.RegressionTests.test_table_lock_cursor_non_readonly_select": (
        _USER_FUNCTION
    ),
}

#: test id (or class id) -> why it runs in a process of its own with a fresh data directory.
ISOLATED: dict[str, str] = {
    "test_transactions.TransactionTests": (
        "setUp opens the database TESTFN with two connections and tearDown resets it by "
        "deleting the file; a dqlite client cannot delete a database, so every test gets "
        "a new embedded node with an empty data directory instead"
    ),
}


def lookup(table: dict[str, str], test_id: str) -> str | None:
    """The reason ``table`` gives for ``test_id`` (``module.Class.test``), if any."""
    parts = test_id.split(".")
    for end in range(len(parts), 0, -1):
        reason = table.get(".".join(parts[:end]))
        if reason is not None:
            return reason
    return None
