"""Contract event-loop-001 (contracts/event-loop-001.md): Mistral chat tokenization
never blocks the event loop. Test names carry the clause id they falsify.

Tokenizers are the ones shipped inside mistral-common (no network):
`MistralTokenizer.v3()` is Mistral-7B-Instruct-v0.3's; tekken_240911.json is a
tekken (tiktoken-based) one.

Loop responsiveness is measured as the gap between ticks of a 1 ms periodic task
that runs while the tokenization is awaited. (`await sleep(0)` alone proves
nothing: it returns at once even when the loop was blocked just before it.)
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mistral_common
import pytest
import trio
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from triolm.prompting.mistral import (
    DEFAULT_TOKENIZATION_THREADS,
    apply_mistral_chat_template,
    async_apply_mistral_chat_template,
    tokenization_limiter,
)

LOOP_GAP_BOUND_S = 0.100  # the contract's bound (EL-001.1)
TICK_S = 0.001

_DATA = os.path.join(os.path.dirname(mistral_common.__file__), "data")


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, MistralTokenizer]:
    return {
        "v3-spm": MistralTokenizer.v3(),
        "tekken": MistralTokenizer.from_file(os.path.join(_DATA, "tekken_240911.json")),
    }


# ------------------------------------------------------------------ payloads

_WORDS = (
    "the of and to in is that for it as with was on be by this are at from or have an "
    "which not but they his her she he we you all one their there been has more if will "
    "tokenization event loop request latency mistral trio thread process server health "
    "café naïve Größe søster 東京 данные δεδομένα 🙂 1234 3.14159 foo_bar() {\"k\": [1, 2]}"
).split()


def large_text(size_kb: int, seed: int = 0) -> str:
    """Deterministic prose-like text of exactly `size_kb` KiB in UTF-8: words, digits,
    punctuation, newlines and some non-ASCII, so both tokenizers do real work."""
    rng = random.Random(seed)
    target = size_kb * 1024
    parts: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(_WORDS)
        sep = "\n" if rng.random() < 0.05 else (". " if rng.random() < 0.08 else " ")
        piece = word + sep
        parts.append(piece)
        size += len(piece.encode())
    text = "".join(parts).encode()[:target].decode("utf-8", errors="ignore")
    return text + "x" * (target - len(text.encode()))


def large_message(size_kb: int) -> dict[str, str]:
    return {"role": "user", "content": large_text(size_kb)}


# ------------------------------------------------------------------ loop monitors


def _summary(gaps: list[float]) -> str:
    ordered = sorted(gaps)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return f"ticks={len(ordered)} gap p50={p(0.5):.2f} ms p99={p(0.99):.2f} ms max={ordered[-1] * 1e3:.2f} ms"


async def trio_tick_gaps(work: Callable[[], Awaitable[Any]]) -> tuple[Any, list[float], float]:
    """Run `work` under Trio while a task ticks every 1 ms; return (result, gaps
    between ticks during the work, work duration)."""
    gaps: list[float] = []
    recording = False
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        last = time.perf_counter()
        while True:
            await trio.sleep(TICK_S)
            now = time.perf_counter()
            if recording:
                gaps.append(now - last)
            last = now
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        while ticks < 3:  # the ticker is running before the work starts
            await trio.sleep(TICK_S)
        recording = True
        start = time.perf_counter()
        result = await work()
        duration = time.perf_counter() - start
        await trio.sleep(2 * TICK_S)  # close the last gap, which may span the work's end
        recording = False
        nursery.cancel_scope.cancel()
    return result, gaps, duration


async def asyncio_tick_gaps(work: Callable[[], Awaitable[Any]]) -> tuple[Any, list[float], float]:
    """Same as trio_tick_gaps, on asyncio."""
    gaps: list[float] = []
    state = {"recording": False, "ticks": 0}

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            if state["recording"]:
                gaps.append(now - last)
            last = now
            state["ticks"] += 1

    task = asyncio.create_task(ticker())
    try:
        while state["ticks"] < 3:
            await asyncio.sleep(TICK_S)
        state["recording"] = True
        start = time.perf_counter()
        result = await work()
        duration = time.perf_counter() - start
        await asyncio.sleep(2 * TICK_S)
        state["recording"] = False
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return result, gaps, duration


def _assert_responsive(label: str, gaps: list[float], duration: float) -> None:
    print(f"\n{label}: tokenization {duration * 1e3:.0f} ms, {_summary(gaps)}")
    # The ticker must have run throughout the work, or the bound below is vacuous.
    assert len(gaps) >= 10, f"{label}: only {len(gaps)} ticks during {duration * 1e3:.0f} ms"
    assert max(gaps) < LOOP_GAP_BOUND_S, f"{label}: event loop blocked {max(gaps) * 1e3:.0f} ms ({_summary(gaps)})"


# ------------------------------------------------------------------ EL-001.1 loop-yield


@pytest.mark.parametrize("tokenizer_name", ["v3-spm", "tekken"])
@pytest.mark.parametrize("size_kb", [439, 500])
async def test_EL_001_1_loop_yield_trio(tokenizers, tokenizer_name, size_kb):
    tokenizer = tokenizers[tokenizer_name]
    messages = [large_message(size_kb)]

    tokens, gaps, duration = await trio_tick_gaps(
        lambda: async_apply_mistral_chat_template(tokenizer, messages)
    )

    assert len(tokens) > size_kb * 100  # really tokenized the whole payload
    _assert_responsive(f"trio {tokenizer_name} {size_kb} KB", gaps, duration)


@pytest.mark.parametrize("tokenizer_name", ["v3-spm", "tekken"])
@pytest.mark.parametrize("size_kb", [439, 500])
def test_EL_001_1_loop_yield_asyncio(tokenizers, tokenizer_name, size_kb):
    tokenizer = tokenizers[tokenizer_name]
    messages = [large_message(size_kb)]

    tokens, gaps, duration = asyncio.run(
        asyncio_tick_gaps(lambda: async_apply_mistral_chat_template(tokenizer, messages))
    )

    assert len(tokens) > size_kb * 100
    _assert_responsive(f"asyncio {tokenizer_name} {size_kb} KB", gaps, duration)


async def test_EL_001_1_monitor_detects_a_blocked_loop(tokenizers):
    """The measurement can fail: the same payload tokenized inline on the loop shows
    up as one gap about as long as the tokenization itself."""
    tokenizer = tokenizers["v3-spm"]
    messages = [large_message(500)]

    async def inline() -> list[int]:
        return apply_mistral_chat_template(tokenizer, messages)

    _, gaps, duration = await trio_tick_gaps(inline)

    print(f"\ninline on the loop: tokenization {duration * 1e3:.0f} ms, {_summary(gaps)}")
    assert max(gaps) >= 0.8 * duration


# ------------------------------------------------------------------ EL-001.2 token-equality

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Local time", "parameters": {"type": "object", "properties": {}}},
    },
]

_TOOL_CALLS = [
    {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "Xyz987uvw", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
]

CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "plain": ([{"role": "user", "content": "Test message " * 1000}], None),
    "system": ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there!"}], None),
    "multi-turn": (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6."},
            {"role": "user", "content": "Thanks — and in Größe/東京 units? 🙂"},
        ],
        None,
    ),
    "content-parts": (
        [{"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]}],
        None,
    ),
    "tools-available": ([{"role": "user", "content": "Weather in Paris?"}], _TOOLS),
    "tool-calls-and-results": (
        [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather and time in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": _TOOL_CALLS},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": '{"temp": 21}'},
            {"role": "tool", "tool_call_id": "Xyz987uvw", "content": "noon"},
        ],
        _TOOLS,
    ),
    "after-tool-round": (
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": _TOOL_CALLS[:1]},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "And tomorrow?"},
        ],
        _TOOLS,
    ),
}

# Control tokens each conversation must produce — so equality is not between two
# equally wrong encodings.
_EXPECTED_CONTROL = {
    "tools-available": ["[AVAILABLE_TOOLS]"],
    "tool-calls-and-results": ["[AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]"],
    "after-tool-round": ["[AVAILABLE_TOOLS]"],
}


@pytest.mark.parametrize("tokenizer_name", ["v3-spm", "tekken"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
async def test_EL_001_2_token_equality(tokenizers, tokenizer_name, conversation):
    tokenizer = tokenizers[tokenizer_name]
    messages, tools = CONVERSATIONS[conversation]

    sync_tokens = apply_mistral_chat_template(tokenizer, messages, tools=tools)
    async_tokens = await async_apply_mistral_chat_template(tokenizer, messages, tools=tools)

    assert async_tokens == sync_tokens
    raw = tokenizer.instruct_tokenizer.tokenizer
    assert sync_tokens[0] == raw.bos_id
    for control in _EXPECTED_CONTROL.get(conversation, []):
        assert raw.get_special_token(control) in sync_tokens, control


@pytest.mark.parametrize("tokenizer_name", ["v3-spm", "tekken"])
def test_EL_001_2_token_equality_asyncio(tokenizers, tokenizer_name):
    tokenizer = tokenizers[tokenizer_name]

    async def all_conversations() -> list[list[int]]:
        return [
            await async_apply_mistral_chat_template(tokenizer, messages, tools=tools)
            for messages, tools in CONVERSATIONS.values()
        ]

    expected = [apply_mistral_chat_template(tokenizer, m, tools=t) for m, t in CONVERSATIONS.values()]
    assert asyncio.run(all_conversations()) == expected


# ------------------------------------------------------------------ EL-001.3 exception-preservation

_USER = {"role": "user", "content": "hi"}
INVALID_INPUTS: dict[str, tuple[Any, list[dict[str, Any]] | None]] = {
    "invalid-role": ([{"role": "invalid_role", "content": "test"}], None),
    "empty-messages": ([], None),
    "messages-not-a-list": ({"role": "user", "content": "hi"}, None),
    "message-not-an-object": (["hello"], None),
    "user-without-content": ([{"role": "user"}], None),
    "tool-message-without-id": ([_USER, {"role": "assistant", "tool_calls": _TOOL_CALLS[:1]}, {"role": "tool", "content": "x"}], None),
    "tool-message-bad-id": (
        [_USER, {"role": "assistant", "tool_calls": _TOOL_CALLS[:1]}, {"role": "tool", "tool_call_id": "call_1", "content": "x"}],
        None,
    ),
    "wrong-alternation": ([_USER, {"role": "tool", "tool_call_id": "abcDEF123", "content": "x"}], None),
    "starts-with-assistant": ([{"role": "assistant", "content": "hello"}], None),
    "ends-with-assistant": ([_USER, {"role": "assistant", "content": "hello"}], None),
    "calls-without-results": (
        [_USER, {"role": "assistant", "tool_calls": _TOOL_CALLS}, {"role": "assistant", "content": "x"}, _USER],
        None,
    ),
    "bad-function-name": (
        [_USER, {"role": "assistant", "tool_calls": [{"id": "abcDEF123", "type": "function", "function": {"name": "no spaces", "arguments": "{}"}}]}],
        None,
    ),
    "image-content-part": ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}], None),
    "invalid-tool-schema": ([_USER], [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]),
    "tool-without-function": ([_USER], [{"type": "function"}]),
}


def _capture(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the point is to capture whatever is raised
        return exc
    raise AssertionError("expected an exception")


async def _capture_async(call: Callable[[], Awaitable[Any]]) -> BaseException:
    try:
        await call()
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("expected an exception")


def _origin(exc: BaseException) -> tuple[str, str]:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return frame.filename, frame.name


def _assert_same_exception(sync_exc: BaseException, async_exc: BaseException) -> None:
    assert type(async_exc) is type(sync_exc)
    assert str(async_exc) == str(sync_exc)
    # The worker's traceback comes along: the innermost frame is where the sync
    # path raised (inside mistral-common or our converter), not the thread glue.
    assert _origin(async_exc) == _origin(sync_exc)


@pytest.mark.parametrize("case", list(INVALID_INPUTS))
async def test_EL_001_3_exception_preservation_trio(tokenizers, case):
    tokenizer = tokenizers["v3-spm"]
    messages, tools = INVALID_INPUTS[case]

    sync_exc = _capture(lambda: apply_mistral_chat_template(tokenizer, messages, tools=tools))
    async_exc = await _capture_async(lambda: async_apply_mistral_chat_template(tokenizer, messages, tools=tools))

    _assert_same_exception(sync_exc, async_exc)


@pytest.mark.parametrize("case", list(INVALID_INPUTS))
def test_EL_001_3_exception_preservation_asyncio(tokenizers, case):
    tokenizer = tokenizers["tekken"]
    messages, tools = INVALID_INPUTS[case]

    sync_exc = _capture(lambda: apply_mistral_chat_template(tokenizer, messages, tools=tools))
    async_exc = asyncio.run(
        _capture_async(lambda: async_apply_mistral_chat_template(tokenizer, messages, tools=tools))
    )

    _assert_same_exception(sync_exc, async_exc)


# ------------------------------------------------------------------ event loops one after the other


class _ConcurrencySpy:
    """Stands in for a MistralTokenizer: records how many encodes overlap."""

    def __init__(self, tokenizer: MistralTokenizer) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def encode_chat_completion(self, request: Any) -> Any:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(0.03)  # long enough for the other callers to pile up
            return self._tokenizer.encode_chat_completion(request)
        finally:
            with self._lock:
                self.active -= 1


async def _concurrent_encodes(tokenizer: Any, n: int, limiter: Any = None) -> tuple[list[list[int]], Any]:
    results: list[list[int]] = [[] for _ in range(n)]
    messages = [{"role": "user", "content": "Test message " * 50}]

    async def one(i: int) -> None:
        results[i] = await async_apply_mistral_chat_template(tokenizer, messages, limiter=limiter)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return results, tokenization_limiter()


def test_EL_001_asyncio_then_trio_in_one_process(tokenizers):
    """No limiter is bound to the first event loop that used it: asyncio.run, then
    trio.run, then asyncio.run again, each with more callers than threads so the
    default limiter really makes callers wait."""
    tokenizer = tokenizers["v3-spm"]
    expected = apply_mistral_chat_template(tokenizer, [{"role": "user", "content": "Test message " * 50}])
    n = DEFAULT_TOKENIZATION_THREADS + 3

    spy = _ConcurrencySpy(tokenizer)
    first, limiter_a = asyncio.run(_concurrent_encodes(spy, n))
    second, limiter_t = trio.run(_concurrent_encodes, spy, n)
    third, limiter_b = asyncio.run(_concurrent_encodes(spy, n))

    assert first == second == third == [expected] * n
    assert spy.max_active == DEFAULT_TOKENIZATION_THREADS  # the default limiter limited, on every loop
    assert len({id(limiter_a), id(limiter_t), id(limiter_b)}) == 3  # one limiter per event loop


async def test_EL_001_explicit_limiter_trio(tokenizers):
    spy = _ConcurrencySpy(tokenizers["v3-spm"])
    await _concurrent_encodes(spy, 4, limiter=trio.CapacityLimiter(1))
    assert spy.max_active == 1

    spy = _ConcurrencySpy(tokenizers["v3-spm"])
    await _concurrent_encodes(spy, 4, limiter=anyio.CapacityLimiter(3))
    assert spy.max_active == 3


def test_EL_001_explicit_limiter_asyncio(tokenizers):
    spy = _ConcurrencySpy(tokenizers["tekken"])

    async def main() -> None:
        await _concurrent_encodes(spy, 4, limiter=anyio.CapacityLimiter(1))

    asyncio.run(main())
    assert spy.max_active == 1
