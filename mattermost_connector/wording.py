"""Counts in words, for every line a person reads: "1 file", "2 files", "1,200 posts"."""

from __future__ import annotations


def amount(count: int, noun: str, plural: str | None = None, *, grouped: bool = False) -> str:
    """`count` and `noun`, singular for exactly one (`plural` when adding "s" is wrong);
    `grouped`: thousands separated (1,200)."""
    number = f"{count:,}" if grouped else str(count)
    return f"{number} {noun if count == 1 else plural or noun + 's'}"
