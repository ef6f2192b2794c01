"""Server settings: one frozen value built from CLI flags or TRIOLM_* environment variables."""

from __future__ import annotations

import os

import attrs

ENV_PREFIX = "TRIOLM_"


@attrs.frozen
class ServerSettings:
    model: str | None = None  # .gguf file, model directory or "random-tiny"; None: the default model
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    task: str = "auto"  # auto | generate | embed (auto: embed when the model's files say so)
    api_key: str | None = None
    # more valid keys: `--api-key` given again, and the lines of `api_key_file`
    extra_api_keys: tuple[str, ...] = attrs.field(default=(), converter=lambda v: str_tuple(v))
    api_key_file: str | None = None
    # CORS: origins whose browser pages may call the API ("*": any); none: no CORS headers
    allowed_origins: tuple[str, ...] = attrs.field(default=(), converter=lambda v: str_tuple(v))
    max_num_seqs: int = 16
    max_model_len: int | None = None  # None: the model's trained context (capped for memory)
    max_queue: int = 64  # waiting requests beyond the running batch; past it: 429
    request_timeout: float | None = 600.0
    tokenizer_mode: str = "auto"  # auto | hf | mistral
    chat_template: str | None = None  # path of a jinja file overriding the model's template
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None  # None: detected from the chat template; "none": off
    log_level: str = "info"
    max_body_size: int = 16 * 1024 * 1024
    dtype: str = "float32"
    kv_cache_memory: int = 2 << 30  # bytes
    kv_cache_dtype: str | None = attrs.field(  # None: the model's dtype
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("float32", "float16"))))
    # Element type of prefill GEMMs on GGUF F16/BF16/Q* weights: float32 is exact;
    # bfloat16 is faster and lossy (triolm.model.linear.PrefillPrecision).
    prefill_precision: str = attrs.field(default="float32",
                                         validator=attrs.validators.in_(("float32", "bfloat16")))
    max_n: int = 16
    graceful_timeout: float = 5.0
    shutdown_delay: float = 1.0  # after SIGTERM: /readyz 503 while still accepting, then drain
    # Worker threads for tokenization/template rendering. One: mistral-common and Jinja are
    # mostly GIL-bound Python, and a second thread only adds a GIL waiter the event loop
    # competes with (bench-results/tokenization.json, docs/tokenization-benchmark.md).
    tokenizer_threads: int = 1
    # Prompt work on text below this many characters takes its own lane, so small requests
    # never queue behind big ones (triolm.runtime.lanes).
    small_work_chars: int = 64 * 1024
    # Budget of one chat-template render (untrusted code from the model file): seconds,
    # characters of output, and bytes of memory of its worker process.
    template_timeout: float = 10.0
    template_max_output: int = 32 * 1024 * 1024
    template_memory: int = 1 << 30
    max_sessions: int = 1024
    session_idle_timeout: float = 3600.0
    seed: int | None = None
    weight_version: str = "default"  # reported with every generated token until weights are updated
    # structured output: budget of a new grammar's first compile, and its size limit
    # (triolm.prompting.grammar.limits.GrammarLimits holds the finer llguidance limits)
    grammar_compile_timeout: float = 2.0  # seconds
    grammar_compile_memory: int = 512 << 20  # bytes
    grammar_max_size: int = 500_000  # symbols in the grammar's productions
    # Responses API: responses kept for previous_response_id / GET, bounded in count, bytes, age
    responses_store_entries: int = 1024
    responses_store_bytes: int = 64 << 20
    responses_store_ttl: float = 3600.0  # seconds

    @classmethod
    def from_env(cls, environ=None, **overrides) -> ServerSettings:
        """Settings from TRIOLM_<FIELD> variables (e.g. TRIOLM_MODEL, TRIOLM_MAX_NUM_SEQS)."""
        values = env_values(cls, environ)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# The fields `triolm serve` and `triolm router` both take their valid API keys from
# (flags or TRIOLM_API_KEY, TRIOLM_EXTRA_API_KEYS, TRIOLM_API_KEY_FILE).
API_KEY_FIELDS = ("api_key", "extra_api_keys", "api_key_file")


def env_values(cls: type, environ=None, names: tuple[str, ...] | None = None) -> dict[str, object]:
    """The TRIOLM_<FIELD> variables that are set, for the fields of the attrs class `cls`
    (only those in `names`, when given), converted to the fields' types."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field in attrs.fields(cls):
        if names is not None and field.name not in names:
            continue
        raw = environ.get(ENV_PREFIX + field.name.upper())
        if raw is None or raw == "":
            continue
        values[field.name] = _convert(raw, field.type)
    return values


def str_tuple(value) -> tuple[str, ...]:
    """A list as it is; a string (from the environment) split at commas."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def _convert(raw: str, type_name) -> object:
    t = str(type_name)
    if "int" in t and "float" not in t:
        return int(raw)
    if "float" in t:
        return float(raw)
    if "bool" in t:
        return raw.lower() in ("1", "true", "yes", "on")
    return raw
