"""Router settings: one frozen value built from `triolm router` flags (and, for the API
keys, the TRIOLM_* variables `triolm serve` reads)."""

from __future__ import annotations

import attrs

from triolm.settings import str_tuple


@attrs.frozen
class RouterSettings:
    tokenizer: str  # GGUF file or Hugging Face directory: tokenizer and chat template only
    backends: tuple[str, ...] = ()  # base URLs (http://host:port), from --backend
    backends_file: str | None = None  # one URL a line; re-read on SIGHUP and POST /admin/backends/reload
    host: str = "127.0.0.1"
    port: int = 8100
    served_model_name: str | None = None
    # the keys that open the OpenAI, session and admin routes, as `triolm serve` takes them:
    # `--api-key` (given again: `extra_api_keys`) and the lines of `api_key_file`
    api_key: str | None = None
    extra_api_keys: tuple[str, ...] = attrs.field(default=(), converter=str_tuple)
    api_key_file: str | None = None
    backend_api_key: str | None = None  # sent to the backends as a Bearer token
    max_model_len: int | None = None
    chat_template: str | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    # health: a check every interval; out after `health_failures` failed checks in a row
    # (at once on a refused connection), back in after one that succeeds
    health_interval: float = 2.0
    health_timeout: float = 2.0
    health_failures: int = 2
    # backpressure: at most this many requests in flight to one backend; with every
    # backend there, new requests get 429 at once
    backend_max_inflight: int = 64
    # routing: a prompt sharing at least `affinity_min_tokens` leading tokens with one a
    # backend served goes there, unless its load exceeds the least loaded one's by more
    # than `affinity_slack` requests
    affinity_min_tokens: int = 32
    affinity_slack: int = 4
    affinity_entries: int = 200_000  # prefix blocks remembered (LRU)
    connect_timeout: float = 3.0
    request_timeout: float = 600.0  # a whole request, and the longest silence of a stream
    max_body_size: int = 16 * 1024 * 1024
    max_sessions: int = 1024
    session_idle_timeout: float = 3600.0
    tokenizer_threads: int = 1
    small_work_chars: int = 64 * 1024
    template_timeout: float = 10.0
    template_max_output: int = 32 * 1024 * 1024
    template_memory: int = 1 << 30
    graceful_timeout: float = 5.0
    log_level: str = "info"
