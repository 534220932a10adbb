# sqlalchemy.testing and alembic.testing are untyped (they opt out of type checking):
# mypy: disallow-untyped-calls=False, warn-return-any=False
"""What SQLAlchemy's and Alembic's compliance suites may expect of ``sqlite+dqlitepy``.

Named by ``requirement_cls`` in ``setup.cfg`` (``[sqla_testing]``) and imported
only by the test suites in ``tests_sqlalchemy/``.  Each attribute answers one
``@testing.requires.<name>`` of the suites.  The rule: a feature SQLite has is
open, whatever ``SuiteRequirements`` assumes by default, and must pass; a
requirement is closed only where SQLite itself (or SQLAlchemy's SQLite dialect)
lacks the feature, or where SQLite behind a dqlite server cannot offer it.  Every
closed requirement is an :class:`_Unsupported` whose reason is the skip message,
so ``pytest -rs`` shows, for each skipped test, which requirement and why.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy
from alembic.testing.requirements import SuiteRequirements as AlembicRequirements
from sqlalchemy.testing import exclusions
from sqlalchemy.testing.exclusions import compound
from sqlalchemy.testing.requirements import SuiteRequirements

__all__ = ["Requirements"]


class _Unsupported:
    """A closed requirement; tests needing it are skipped with "<name>: <reason>"."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.name = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> compound:
        return exclusions.closed(f"{self.name}: {self.reason}")


class _Supported:
    """An open requirement (SQLite has the feature, the default said otherwise)."""

    def __get__(self, instance: object, owner: type | None = None) -> compound:
        return exclusions.open()


def _server_at_least(*version: int) -> compound:
    def too_old(config: Any) -> bool:
        return tuple(config.db.dialect.server_version_info) < version

    needed = ".".join(map(str, version))
    return exclusions.skip_if(too_old, f"the server's SQLite is older than {needed}")


def _sqlalchemy_at_least(version: tuple[int, int], what: str) -> compound:
    installed = tuple(int(p) for p in re.findall(r"\d+", sqlalchemy.__version__)[:2])
    needed = ".".join(map(str, version))
    return exclusions.skip_if(
        lambda config: installed < version,
        f"{what}: SQLAlchemy's SQLite dialect does this from {needed} on",
    )


_NO_SCHEMAS = "SQLite's schemas are ATTACHed database files, and a dqlite server refuses ATTACH"
_NO_FETCH = "SQLite has LIMIT/OFFSET, not FETCH FIRST"
_NO_IDENTITY = "SQLite has no GENERATED ... AS IDENTITY columns"
_NO_COMMENTS = "SQLite has no table, column or constraint comments"
_NO_TZ = "SQLite has no date/time type with a time zone"


class Requirements(SuiteRequirements, AlembicRequirements):
    """Requirements of a dqlite database: SQLite on the server, reached over the network."""

    # ------------------------------------------------- closed: a network SQLite
    # Limits of SQLite behind a dqlite server, not of SQLite: a client stays inside
    # its one replicated database (docs/architecture.md), and SQL runs on the leader.

    schemas = _Unsupported(_NO_SCHEMAS)
    schema_reflection = _Unsupported(_NO_SCHEMAS)
    cross_schema_fk_reflection = _Unsupported(_NO_SCHEMAS)
    percent_schema_names = _Unsupported(_NO_SCHEMAS)
    default_schema_name_switch = _Unsupported(_NO_SCHEMAS)
    schema_create_delete = _Unsupported(_NO_SCHEMAS)
    # The dqlite protocol sends a query's whole result at once; nothing stays open
    # on the server between fetches (SQLite has no server-side cursors either).
    server_side_cursors = _Unsupported("the dqlite protocol has no server-side cursors")

    @property
    def regexp_match(self) -> compound:
        # SQLite has no REGEXP function of its own.  pysqlite defines one in Python
        # with create_function(); over dqlite that function would have to run on
        # the server, which cannot call back into this process.  The dialect
        # compiles REGEXP only when the server has a regexp function (neither C
        # dqlite nor the dqlitepy server has one), and raises CompileError otherwise.
        return exclusions.skip_if(
            lambda config: not getattr(config.db.dialect, "server_has_regexp", True),
            "regexp_match: the server has no REGEXP function, and a Python one "
            "registered with create_function() cannot run on the server",
        )

    # ----------------------------------------------- closed: SQLite has no such thing

    sequences = _Unsupported("SQLite has no sequences")
    sequences_optional = _Unsupported("SQLite has no sequences")
    identity_columns = _Unsupported(_NO_IDENTITY)
    identity_columns_standard = _Unsupported(_NO_IDENTITY)
    identity_columns_alter = _Unsupported(_NO_IDENTITY)
    autoincrement_on_composite_pk = _Unsupported(
        "SQLite's AUTOINCREMENT is for a single INTEGER PRIMARY KEY only"
    )
    # Alembic alters SQLite tables in "batch" mode (copy and move) instead.
    alter_column = _Unsupported("SQLite's ALTER TABLE cannot alter a column")
    materialized_views = _Unsupported("SQLite has no materialized views")
    materialized_views_reflect_pk = _Unsupported("SQLite has no materialized views")
    create_or_replace_view = _Unsupported("SQLite has no CREATE OR REPLACE VIEW")
    comments = _Unsupported(_NO_COMMENTS)
    comment_reflection = _Unsupported(_NO_COMMENTS)
    comment_reflection_full_unicode = _Unsupported(_NO_COMMENTS)
    constraint_comment_reflection = _Unsupported(_NO_COMMENTS)
    temp_table_comment_reflection = _Unsupported(_NO_COMMENTS)
    array_type = _Unsupported("SQLite has no ARRAY type")
    datetime_interval = _Unsupported("SQLite has no INTERVAL type")
    datetime_timezone = _Unsupported(_NO_TZ)
    datetime_timezone_historic = _Unsupported(_NO_TZ)
    time_timezone = _Unsupported(_NO_TZ)
    fetch_first = _Unsupported(_NO_FETCH)
    fetch_ties = _Unsupported(_NO_FETCH)
    fetch_percent = _Unsupported(_NO_FETCH)
    fetch_no_order_by = _Unsupported(_NO_FETCH)
    fetch_offset_with_options = _Unsupported(_NO_FETCH)
    fetch_expression = _Unsupported(_NO_FETCH)
    supports_distinct_on = _Unsupported("SQLite has no DISTINCT ON")
    delete_from = _Unsupported("SQLite's DELETE names one table: no DELETE ... FROM/USING join")
    table_value_constructor = _Unsupported(
        "SQLite cannot name the columns of VALUES in FROM (... AS t(a, b))"
    )
    index_reflects_included_columns = _Unsupported("SQLite indexes have no INCLUDE columns")
    # The dialect warns "Skipped unsupported reflection of expression-based index".
    reflect_indexes_with_expressions = _Unsupported(
        "SQLAlchemy's SQLite dialect does not reflect expression indexes"
    )
    reflect_indexes_with_ascdesc_as_expression = _Unsupported(
        "DESC index columns reflect as columns in SQLite, not as expressions (Oracle's way)"
    )
    reflect_tables_no_columns = _Unsupported("SQLite cannot create a table without columns")
    column_collation_reflection = _Unsupported(
        "SQLAlchemy's SQLite dialect does not reflect column collations"
    )
    implicitly_named_constraints = _Unsupported("SQLite gives no names to unnamed constraints")
    unique_constraints_reflect_as_index = _Unsupported(
        "SQLite reports a UNIQUE constraint apart from its index (this tests other databases)"
    )
    unique_index_reflect_as_unique_constraints = _Unsupported(
        "SQLite reports a unique index as an index only (this tests MySQL)"
    )
    foreign_keys_reflect_as_index = _Unsupported(
        "SQLite creates no index for a foreign key (this tests MySQL)"
    )
    parens_in_union_contained_select_w_limit_offset = _Unsupported(
        "SQLite's grammar has no parenthesised SELECT inside a UNION"
    )
    parens_in_union_contained_select_wo_limit_offset = _Unsupported(
        "SQLite's grammar has no parenthesised SELECT inside a UNION"
    )
    precision_numerics_many_significant_digits = _Unsupported(
        "SQLite keeps NUMERIC in an 8-byte REAL: about 15 significant digits"
    )
    window_range_non_numeric = _Unsupported(
        "SQLite's RANGE frame offsets need a numeric ORDER BY term"
    )
    regexp_replace = _Unsupported("SQLite has no regexp_replace()")
    json_deserializer_binary = _Unsupported("SQLite's JSON is text, never bytes")
    computed_columns_default_persisted = _Unsupported(
        "SQLite's generated columns are VIRTUAL unless STORED is said (tests PostgreSQL < 18)"
    )
    computed_columns_warn_no_persisted = _Unsupported(
        "SQLite's generated columns are VIRTUAL unless STORED is said (tests PostgreSQL < 18)"
    )
    # SQLite accepts DEFERRABLE/INITIALLY on a foreign key; Alembic's tests compare
    # them after reflection, which SQLAlchemy's SQLite dialect does not do.
    fk_initially = _Unsupported("SQLAlchemy's SQLite dialect does not reflect INITIALLY")
    fk_deferrable = _Unsupported("SQLAlchemy's SQLite dialect does not reflect DEFERRABLE")
    fk_deferrable_is_reflected = _Unsupported(
        "SQLAlchemy's SQLite dialect does not reflect DEFERRABLE"
    )
    denormalized_names = _Unsupported(
        "SQLite keeps names as written; only upper-casing databases (Oracle, DB2) normalise"
    )

    # ------------------------------------------------------ open: SQLite has it

    # SERIALIZABLE, READ UNCOMMITTED (PRAGMA read_uncommitted) and AUTOCOMMIT; the
    # dialect detects autocommit without a round trip.
    isolation_level = _Supported()
    autocommit = _Supported()
    autocommit_isolation = _Supported()
    skip_autocommit_rollback = _Supported()
    dialect_level_isolation_level_param = _Supported()
    # Connection.lastrowid, as in sqlite3.
    dbapi_lastrowid = _Supported()
    table_ddl_if_exists = _Supported()
    index_ddl_if_exists = _Supported()
    create_table_as = _Supported()
    create_temp_table_as = _Supported()
    views = _Supported()
    # TEMP tables and views live in the connection's server session, as in SQLite.
    temporary_views = _Supported()
    temp_table_names = _Supported()
    has_temp_table = _Supported()
    temp_table_reflection = _Supported()
    temp_table_reflect_indexes = _Supported()
    ctes = _Supported()
    ctes_with_values = _Supported()
    ctes_with_update_delete = _Supported()
    # SQLite has no UUID or TIMESTAMP type of its own, but SQLAlchemy's UUID and
    # TIMESTAMP types work on it (as text), and their tests pass.
    uuid_data_type = _Supported()
    timestamp_microseconds = _Supported()
    timestamp_microseconds_implicit_bound = _Supported()
    tuple_in = _Supported()
    tuple_in_w_empty = _Supported()
    # JSON functions are built into SQLite (since 3.38; an extension before).
    json_type = _Supported()
    legacy_unconditional_json_extract = _Supported()
    # pysqlite skips this for CPython bpo-38749 (json_extract() of a character
    # outside the BMP); dqlitepy reads the text off the wire and gets it right.
    json_index_supplementary_unicode_element = _Supported()
    check_constraint_reflection = _Supported()
    inline_check_constraint_reflection = _Supported()
    unique_constraint_reflection = _Supported()
    reflects_pk_names = _Supported()
    foreign_key_constraint_option_reflection_ondelete = _Supported()
    foreign_key_constraint_option_reflection_onupdate = _Supported()
    fk_constraint_option_reflection_ondelete_restrict = _Supported()
    fk_constraint_option_reflection_ondelete_noaction = _Supported()
    fk_constraint_option_reflection_onupdate_restrict = _Supported()
    fk_ondelete_is_reflected = _Supported()
    fk_onupdate_is_reflected = _Supported()
    reflects_fk_options = _Supported()
    repeated_column_foreign_keys = _Supported()
    repeated_remote_col_foreign_keys = _Supported()
    indexes_with_expressions = _Supported()
    indexes_check_column_order = _Supported()
    expression_server_defaults = _Supported()
    server_defaults = _Supported()
    nvarchar_types = _Supported()
    unicode_ddl = _Supported()
    datetime_literals = _Supported()
    datetime_historic = _Supported()
    date_historic = _Supported()
    infinity_floats = _Supported()
    float_or_double_precision_behaves_generically = _Supported()
    precision_numerics_retains_significant_digits = _Supported()
    supports_bitwise_and = _Supported()
    supports_bitwise_or = _Supported()
    supports_bitwise_not = _Supported()
    supports_bitwise_xor = _Supported()
    supports_bitwise_shift = _Supported()
    # A named database is shared by every connection to it.
    independent_readonly_connections = _Supported()

    def get_order_by_collation(self, config: Any) -> str:
        return "NOCASE"

    @property
    def reflect_table_options(self) -> compound:
        # WITHOUT ROWID and STRICT, which SQLAlchemy's SQLite dialect reflects since 2.1.
        return _sqlalchemy_at_least((2, 1), "reflect_table_options")

    @property
    def foreign_key_constraint_name_reflection(self) -> compound:
        # SQLAlchemy 2.0's SQLite dialect misses some foreign key names (a mixed-case
        # name on a table whose name is quoted); 2.1 reflects them.
        return _sqlalchemy_at_least((2, 1), "foreign_key_constraint_name_reflection")

    @property
    def foreign_key_name_reflection(self) -> compound:
        # Alembic's name for foreign_key_constraint_name_reflection.
        return _sqlalchemy_at_least((2, 1), "foreign_key_name_reflection")

    @property
    def update_from(self) -> compound:
        # UPDATE ... FROM arrived in SQLite 3.33.
        return _server_at_least(3, 33)

    @property
    def window_functions(self) -> compound:
        # Window functions arrived in SQLite 3.25.
        return _server_at_least(3, 25)

    @property
    def window_range(self) -> compound:
        return self.window_functions

    @property
    def window_range_numeric(self) -> compound:
        return self.window_functions

    @property
    def computed_columns(self) -> compound:
        # Generated columns arrived in SQLite 3.31.
        return _server_at_least(3, 31)

    @property
    def computed_columns_stored(self) -> compound:
        return self.computed_columns

    @property
    def computed_columns_virtual(self) -> compound:
        return self.computed_columns

    @property
    def computed_columns_reflect_persisted(self) -> compound:
        return self.computed_columns
