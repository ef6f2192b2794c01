"""The grammar-compile sandbox's child process, and the checks both sides run.

llguidance's compile is native code that cannot be interrupted, and some schemas make
it exponential in time and memory before any of its own limits applies (the JSON
compiler's regex-emptiness proof over `allOf` patterns grows ~3x per pattern). So every
new grammar is first compiled here, in a child with a memory cap (RLIMIT_AS) that the
parent kills when its wall-clock budget runs out; only a grammar that passed is compiled
in the server process, where the same deterministic work is then known to be bounded.

Run as a script (`python -I compile_worker.py`): it imports only the standard library
and llguidance, so it starts fast and small.  Frames on stdin/stdout are a 4-byte
big-endian length and a payload: first a JSON header and the token table, then one JSON
request per grammar, each answered by one JSON reply.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import threading
import time
from typing import BinaryIO

import llguidance

# Forced tokens walked by `probe` after the first mask: a grammar that fails on its
# first free step (an unsatisfiable recursive `$ref`, a lexer regex past its fuel, a
# parser row past its item limit) is refused before a request generates anything.
PROBE_FORCED_STEPS = 8


def probe(matcher: llguidance.LLMatcher, n_vocab: int, eos: list[int],
          steps: int = PROBE_FORCED_STEPS) -> str | None:
    """Compute the first mask (on `matcher` itself: later copies start warm), then
    follow the forced tokens on a copy for up to `steps` masks; the llguidance error
    met on the way, or None."""
    if matcher.is_error():
        return matcher.get_error()
    walker = matcher
    for step in range(steps + 1):
        mask = walker.compute_bitmask()
        if walker.is_error():
            return walker.get_error()
        if walker.is_stopped():
            return None
        allowed = _allowed(mask, n_vocab, limit=2)
        free = [t for t in allowed if t not in eos]
        if len(allowed) != 1 or len(free) != 1:
            return None  # a real choice (or only EOS): the grammar is live here
        if step == 0:
            walker = matcher.deep_copy()
        if not walker.consume_token(free[0]):
            return walker.get_error()
    return None


def _allowed(mask: bytes, n_vocab: int, limit: int) -> list[int]:
    """Up to `limit` allowed token ids of a little-endian bitmask."""
    out = []
    for i, byte in enumerate(mask):
        while byte:
            low = byte & -byte
            tid = i * 8 + low.bit_length() - 1
            if tid >= n_vocab:
                return out
            out.append(tid)
            if len(out) >= limit:
                return out
            byte ^= low
    return out


# -- the child process -------------------------------------------------------------------
class _GreedyTable:
    """What llguidance.TokenizerWrapper reads. Compiling never needs the model's own
    tokenization, so a longest-match encoder over the same bytes is enough here."""

    def __init__(self, tokens: list[bytes], eos: list[int], bos: int | None, special: list[int]):
        self.tokens = tokens
        self.eos_token_id = eos[0] if eos else None
        self.bos_token_id = bos
        self.special_token_ids = special
        skip = set(special)
        self._by_bytes: dict[bytes, int] = {}
        for i, b in enumerate(tokens):
            if i not in skip:
                self._by_bytes.setdefault(b, i)
        self._max_len = max((len(b) for b in self._by_bytes), default=1)

    def __call__(self, data: bytes) -> list[int]:
        out, pos = [], 0
        while pos < len(data):
            for ln in range(min(self._max_len, len(data) - pos), 0, -1):
                tid = self._by_bytes.get(data[pos:pos + ln])
                if tid is not None:
                    out.append(tid)
                    pos += ln
                    break
            else:
                pos += 1
        return out


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    data = stream.read(size)
    return data if len(data) == size else None


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def pack_tokens(tokens: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(t)) + t for t in tokens)


def unpack_tokens(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4:pos + 4 + size])
        pos += 4 + size
    return out


def _cap_memory(extra_bytes: int) -> None:
    """Cap the address space at what the process maps now plus `extra_bytes`: an
    allocation past it fails and llguidance aborts the process, which the parent reads
    as the memory limit."""
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    limit = mapped + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _check(tokenizer: llguidance.LLTokenizer, eos: list[int], request: dict) -> dict:
    limits = llguidance.LLParserLimits(**request["limits"])
    matcher = llguidance.LLMatcher(tokenizer, request["grammar"], log_level=0, limits=limits)
    error = probe(matcher, tokenizer.vocab_size, eos)
    return {"error": error or None, "warnings": [] if error else matcher.get_grammar_warnings()}


def _exit_with_parent(parent: int) -> None:
    """End this process soon after the server's: a closed stdin is only seen between two
    compiles, and a hostile compile must not outlive the server. (llguidance releases
    the GIL while it compiles, so this thread runs meanwhile.)"""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main() -> int:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    header = read_frame(stdin)
    table = read_frame(stdin)
    if header is None or table is None:
        return 1
    info = json.loads(header)
    gt = _GreedyTable(unpack_tokens(table), info["eos"], info["bos"], info["special"])
    tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(gt), n_vocab=info["n_vocab"],
                                       eos_token=info["eos"] or None)
    del table
    _cap_memory(info["memory_bytes"])
    write_frame(stdout, b'{"ready": true}')
    while (frame := read_frame(stdin)) is not None:
        write_frame(stdout, json.dumps(_check(tokenizer, info["eos"], json.loads(frame))).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
