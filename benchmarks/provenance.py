"""What every benchmark prints with its figures: which commit produced them."""

from __future__ import annotations

import subprocess


def tree_commit(tree: object) -> str:
    """The short hash of HEAD in another checkout (a baseline tree)."""
    return subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def git_commit() -> str:
    """The short hash of HEAD, marked when the tree has uncommitted changes."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if not head:
        return "uncommitted"
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    return f"{head}+changes" if dirty.stdout.strip() else head
