"""SQL pieces more than one of durakit's stores use."""

from __future__ import annotations


def utc_text(column: str, *, millis: bool = False) -> str:
    """`column` (a timestamptz) as ISO 8601 text in UTC, as every command prints times."""
    seconds = "SS.MS" if millis else "SS"
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:{seconds}"Z"')"""
