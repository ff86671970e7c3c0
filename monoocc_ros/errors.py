"""Error text for users: every command and the node report a problem as one line."""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML, rcl and rosbags errors span several), or its
    type's name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__
