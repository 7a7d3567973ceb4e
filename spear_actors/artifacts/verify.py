"""Checks on artifact bytes: sha256 digests and the cheap "is this WASM?" test."""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable
from pathlib import Path

import trio

from .location import invalid

__all__ = [
    "HASH_CHUNK",
    "WASM_MAGIC",
    "check_digest",
    "check_wasm",
    "hash_file_sync",
    "looks_like_wasm",
    "read_head_sync",
    "sha256_file",
]

HASH_CHUNK = 1024 * 1024
WASM_MAGIC = b"\0asm"
_WAT_PROBE = 64 * 1024
"""How much of a text module is inspected: enough to skip a licence header comment."""


def hash_file_sync(path: Path, check: Callable[[], None] = lambda: None) -> tuple[str, int]:
    """sha256 hex and size of *path* (blocking; run it in a thread).

    *check* is called between chunks so a cancelled caller stops a long hash early
    (``trio.from_thread.check_cancelled``).
    """
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            check()
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def sha256_file(path: Path) -> tuple[str, int]:
    """sha256 hex and size of *path*, hashed in a worker thread."""
    return await trio.to_thread.run_sync(hash_file_sync, path, trio.from_thread.check_cancelled)


def check_digest(shown: str, expected: str | None, actual: str) -> None:
    """INVALID_ARGUMENT naming both digests unless *expected* is None or equal."""
    if expected is not None and expected != actual:
        raise invalid(
            shown,
            f"checksum mismatch: expected sha256 {expected}, got {actual}",
            expected=expected,
            actual=actual,
        )


def _skip_wat_trivia(text: str) -> str:
    # Whitespace, ";; line" comments and nestable "(; block ;)" comments, per the
    # WebAssembly text format; returns what follows them.
    pos = 0
    while pos < len(text):
        if text[pos].isspace() or text[pos] == "\ufeff":
            pos += 1
        elif text.startswith(";;", pos):
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end + 1
        elif text.startswith("(;", pos):
            depth, pos = 1, pos + 2
            while depth and pos < len(text):
                if text.startswith("(;", pos):
                    depth, pos = depth + 1, pos + 2
                elif text.startswith(";)", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
        else:
            break
    return text[pos:]


def looks_like_wasm(head: bytes) -> bool:
    """True if *head* (the first bytes of a module) is binary WASM or plausible WAT.

    Deliberately cheap: the runtime compiles the module and reports real errors; this
    only turns "someone sent a tarball / an HTML error page as a wasm artifact" into
    a clear INVALID_ARGUMENT at task creation.
    """
    if head.startswith(WASM_MAGIC):
        return True
    # Incremental decode tolerates a multi-byte character cut at the probe boundary.
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head[:_WAT_PROBE], final=False)
    except UnicodeDecodeError:
        return False
    return _skip_wat_trivia(text).startswith("(")


def check_wasm(shown: str, head: bytes) -> None:
    """INVALID_ARGUMENT unless *head* looks like a WASM module."""
    if not looks_like_wasm(head):
        raise invalid(shown, "wasm artifact is neither a binary module (\\0asm) nor WebAssembly text")


def read_head_sync(path: Path) -> bytes:
    """The first bytes of *path* that :func:`looks_like_wasm` inspects (blocking)."""
    with path.open("rb") as f:
        return f.read(_WAT_PROBE)
