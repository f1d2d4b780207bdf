"""The declaration of which columns hold customer data (`durakit.encryption.SEALED_COLUMNS`)
against the schema a migrated database really has: every text or JSON column of a durakit
table is either sealed or listed in `CLEAR_COLUMNS` with why, so a new column that could
hold customer data cannot be added without deciding; and each sealed column's type, binding
and primary key are the ones the stores and `durakit db rewrap` rely on."""

from __future__ import annotations

import psycopg

from durakit.encryption import CLEAR_COLUMNS, SEALED_COLUMNS

# Text and JSON, alone or as arrays; varchar and char count as text.
TEXTUAL_TYPES = ("text", "varchar", "bpchar", "json", "jsonb")

TEXTUAL_COLUMNS_SQL = """
SELECT table_name || '.' || column_name AS name, udt_name
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name LIKE 'durakit\\_%%'
  AND ltrim(udt_name, '_') = ANY(%s)
"""
PRIMARY_KEY_SQL = """
SELECT a.attname AS column FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
"""
COLUMN_TYPE_SQL = """
SELECT column_name, udt_name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = %s
"""


def textual_columns(conn: psycopg.Connection) -> dict[str, str]:
    """{"durakit_table.column": its type} for every text or JSON column of a durakit table."""
    return {row["name"]: row["udt_name"] for row in conn.execute(TEXTUAL_COLUMNS_SQL, (list(TEXTUAL_TYPES),))}


def undecided(conn: psycopg.Connection) -> set[str]:
    """The text or JSON columns of durakit tables declared neither sealed nor clear."""
    return set(textual_columns(conn)) - {sealed.name for sealed in SEALED_COLUMNS} - set(CLEAR_COLUMNS)


def test_every_text_or_json_column_of_a_durakit_table_is_sealed_or_clear_on_purpose(conn):
    assert undecided(conn) == set(), (
        "These columns may hold customer data: declare each in SEALED_COLUMNS (runtime/encryption.py) "
        "and seal it in its store, or list it in CLEAR_COLUMNS with why it stays in clear"
    )


def test_the_declaration_names_only_columns_that_exist_and_each_once(conn):
    found = textual_columns(conn)
    sealed = [column.name for column in SEALED_COLUMNS]
    assert len(sealed) == len(set(sealed))
    assert set(sealed) & set(CLEAR_COLUMNS) == set()
    assert (set(sealed) | set(CLEAR_COLUMNS)) - set(found) == set()  # no stale entries
    assert all(reason.strip() for reason in CLEAR_COLUMNS.values())


def test_each_sealed_column_has_its_declared_type_binding_and_primary_key(conn):
    for sealed in SEALED_COLUMNS:
        types = {row["column_name"]: row["udt_name"] for row in conn.execute(COLUMN_TYPE_SQL, (sealed.table,))}
        assert types[sealed.column] == sealed.kind.value, sealed.name
        assert set(sealed.binding) <= set(types), sealed.name  # rewrap reads these to rebuild the binding
        primary_key = {row["column"] for row in conn.execute(PRIMARY_KEY_SQL, (sealed.table,))}
        assert set(sealed.primary_key) == primary_key, sealed.name  # rewrap updates one row by it


def test_a_new_text_json_or_array_column_is_caught_and_a_number_is_not(conn):
    with conn.transaction(force_rollback=True):  # the probe table is never seen by anyone else
        conn.execute(
            "CREATE TABLE durakit_probe (thread_id TEXT PRIMARY KEY, customer_phone VARCHAR(40), "
            "profile JSONB, tags TEXT[], raw JSON, visits INTEGER)"
        )
        assert undecided(conn) == {
            "durakit_probe.thread_id", "durakit_probe.customer_phone", "durakit_probe.profile",
            "durakit_probe.tags", "durakit_probe.raw",
        }
    assert undecided(conn) == set()
