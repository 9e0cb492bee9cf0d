"""Checking a command's arguments. Every check runs before any change: a command that fails
one is refused whole (BAD_REQUEST) and the state stays as it was."""

from __future__ import annotations

from .errors import bad

NAME_CHARS_MAX = 200
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def name(args: dict, field: str, default: str | None = None) -> str:
    value = args.get(field, default)
    if type(value) is not str or not 0 < len(value) <= NAME_CHARS_MAX:
        raise bad(f"{field} must be a name of 1 to {NAME_CHARS_MAX} characters")
    if not set(value) <= _NAME_OK:
        raise bad(f"{field} {value!r}: use letters, digits, '.', '_' and '-'")
    return value


def integer(args: dict, field: str, default: int, low: int = 0, high: int = 1 << 62) -> int:
    value = args.get(field, default)
    if type(value) is not int or not low <= value <= high:
        raise bad(f"{field} must be an integer from {low} to {high}")
    return value


def optional_integer(args: dict, field: str, low: int = 0, high: int = 1 << 62) -> int | None:
    if args.get(field) is None:
        return None
    return integer(args, field, 0, low, high)


def optional_text(args: dict, field: str, chars_max: int) -> str | None:
    value = args.get(field)
    if value is not None and (type(value) is not str or len(value) > chars_max):
        raise bad(f"{field} must be text of at most {chars_max:,} characters")
    return value


def flag(args: dict, field: str, default: bool) -> bool:
    value = args.get(field, default)
    if type(value) is not bool:
        raise bad(f"{field} must be true or false")
    return value


def leases(args: dict, limit: int) -> list[tuple[int, int]]:
    """[[offset, token], ...]: at least one, at most `limit`, no offset twice."""
    value = args.get("leases")
    if type(value) is not list or not 0 < len(value) <= limit:
        raise bad(f"leases must be a list of 1 to {limit} [offset, token] pairs")
    out = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise bad("each lease is [offset, token] with non-negative integers")
        offset, token = item
        if type(offset) is not int or type(token) is not int or offset < 0 or token < 0:
            raise bad("each lease is [offset, token] with non-negative integers")
        out.append((offset, token))
    if len({offset for offset, _ in out}) != len(out):
        raise bad("an offset appears twice in leases")
    return out


def known_fields(args: dict, allowed: frozenset[str], op: str) -> None:
    if not allowed.issuperset(args):  # no set built when all are known: once per message
        unknown = set(args) - allowed
        raise bad(f"{op} does not take {sorted(map(str, unknown))}")
