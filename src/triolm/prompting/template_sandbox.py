"""The bounded Jinja sandbox chat templates run in.

A chat template comes from a model file: it is untrusted code. Jinja's sandbox stops
attribute escapes, not work, so this environment also bounds work:

- no compile-time constant folding (`optimized=False` and a context-taking `finalize`):
  compiling costs time linear in the source, never the cost of evaluating it;
- a wall-clock deadline checked on every call, attribute and item access, operator,
  output value and loop step over `range`, so a loop of loops stops at the deadline;
- `*`, `**`, `%` and `+` refuse results beyond the output budget (`"c" * 10**10`,
  `(n+9)**100000000`), as do the `format` and `center` filters, `str.format` fields, `lipsum`, and a
  `namespace` attribute holding a string or list beyond it (string doubling);
- the rendered text itself is capped by streaming it (`Template.generate`).

These guards turn the common shapes into clear errors quickly. They are not the only
bound: the server renders in a separate process with an address-space limit and kills
it at the deadline (`triolm.prompting.template_workers`), which also covers what a guard
here cannot see (a C call that allocates before returning).
"""

from __future__ import annotations

import contextvars
import math
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import jinja2
import jinja2.sandbox
import jinja2.utils
from jinja2.utils import pass_context

from triolm.formats.load_limits import MAX_CHAT_TEMPLATE_BYTES

#: Templates in the wild are a few KB (the largest known, with built-in system prompts
#: and tool schemas, are tens of KB); beyond this a source is refused before parsing.
MAX_TEMPLATE_CHARS = MAX_CHAT_TEMPLATE_BYTES  # characters never outnumber the bytes the loader checks


@attrs.frozen
class RenderBudget:
    """What one render may spend: wall-clock seconds and characters of output (also the
    largest string or list an operator or filter may build)."""

    seconds: float = 10.0
    output_chars: int = 32 * 1024 * 1024


class TemplateBudgetExceeded(Exception):
    """A render went past its budget of time, output size or memory."""


class _Deadline:
    __slots__ = ("budget", "deadline")

    def __init__(self, budget: RenderBudget):
        self.budget = budget
        self.deadline = time.monotonic() + budget.seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateBudgetExceeded(
                f"chat template rendering took longer than its budget of {self.budget.seconds:g} s")

    def check_size(self, size: int, what: str) -> None:
        if size > self.budget.output_chars:
            raise TemplateBudgetExceeded(
                f"chat template {what} would be {size} long, beyond the budget of "
                f"{self.budget.output_chars} characters")


_active: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar("template_budget", default=None)


def _current() -> _Deadline:
    active = _active.get()
    if active is None:  # compile-time evaluation or a render outside `budgeted`: refuse the work
        raise TemplateBudgetExceeded("chat template work outside a budgeted render")
    return active


class budgeted:
    """`with budgeted(budget): template.render(...)` — the guards of this module enforce
    `budget` for renders in this context (thread, or the task that entered it)."""

    def __init__(self, budget: RenderBudget):
        self._deadline = _Deadline(budget)
        self._token: contextvars.Token | None = None

    def __enter__(self) -> _Deadline:
        self._token = _active.set(self._deadline)
        return self._deadline

    def __exit__(self, *exc: object) -> None:
        _active.reset(self._token)


_INT_BITS_LIMIT = 1 << 16  # ~20k decimal digits: far beyond any template's arithmetic


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


def _check_product(deadline: _Deadline, left: Any, right: Any) -> None:
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
            deadline.check_size(len(seq) * max(n, 0), "repetition")
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > _INT_BITS_LIMIT:
            raise TemplateBudgetExceeded("chat template arithmetic result is too large")


def _check_power(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
        if right * math.log2(abs(left)) > _INT_BITS_LIMIT:
            raise TemplateBudgetExceeded("chat template arithmetic result is too large")


_PRINTF_WIDTH = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_MAX_FIELD_WIDTH = 10_000


def _check_printf(deadline: _Deadline, fmt: str) -> None:
    """`"%999999999d" % 1` allocates a GB in one C call: refuse wide fields first."""
    deadline.check_size(len(fmt), "format string")
    for width, precision in _PRINTF_WIDTH.findall(fmt):
        for part in (width, precision):
            if part == "*" or (part and int(part) > _MAX_FIELD_WIDTH):
                raise TemplateBudgetExceeded(
                    f"chat template format field wider than {_MAX_FIELD_WIDTH} characters")


_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")
_WIDE_NUMBER = re.compile(rf"\d{{{len(str(_MAX_FIELD_WIDTH))},}}")


def _check_str_format(fmt: str) -> None:
    """`"{:999999999}".format(1)`: the same refusal for `str.format` fields."""
    for spec in _FORMAT_SPEC.findall(fmt):
        if _WIDE_NUMBER.search(spec) or "{" in spec:
            raise TemplateBudgetExceeded(
                f"chat template format field wider than {_MAX_FIELD_WIDTH} characters")


class BoundedRange(Sequence):
    """`range` whose iteration checks the render's deadline at every step: nested loops
    over ranges (10^10 iterations in a few characters) stop at the deadline."""

    def __init__(self, rng: range):
        self._range = rng

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index):
        item = self._range[index]
        return BoundedRange(item) if isinstance(item, range) else item

    def __iter__(self) -> Iterator[int]:
        deadline = _current()
        for i in self._range:
            deadline.check()
            yield i

    def __reversed__(self) -> Iterator[int]:
        return iter(BoundedRange(self._range[::-1]))

    def __contains__(self, value: object) -> bool:
        return value in self._range

    def __repr__(self) -> str:
        return repr(self._range)


def _bounded_range(*args: int) -> BoundedRange:
    return BoundedRange(jinja2.sandbox.safe_range(*args))  # ≤ MAX_RANGE items each


class _BoundedNamespace(jinja2.utils.Namespace):
    """`namespace()` whose attributes cannot hold a string or list beyond the budget
    (`{% set ns.s = ns.s ~ ns.s %}` in a loop doubles a string to gigabytes)."""

    def __setitem__(self, name: str, value: Any) -> None:
        _current().check_size(_sized(value), f"namespace attribute {name!r}")
        super().__setitem__(name, value)


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n > 100 or max > 1000:
        raise TemplateBudgetExceeded("chat template lipsum() asked for too much text")
    return jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max)


@pass_context
def _finalize(context, value: Any) -> Any:
    """Every `{{ value }}`: a deadline check and a size check. Taking the context also
    tells Jinja's compiler not to evaluate output expressions at compile time."""
    deadline = _current()
    deadline.check()
    deadline.check_size(_sized(value), "output value")
    return value


def _bounded_format(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise jinja2.exceptions.FilterArgumentError("can't handle positional and keyword arguments at the same time")
    deadline = _current()
    _check_printf(deadline, str(value))
    return str(value) % (kwargs or args)


def _bounded_center(value: Any, width: int = 80) -> str:
    _current().check_size(int(width), "center() width")
    return str(value).center(width)


class BoundedSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The immutable sandbox with the work bounds described in the module docstring."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any):
        super().__init__(optimized=False, finalize=_finalize, **options)
        self.globals["range"] = _bounded_range
        self.globals["namespace"] = _BoundedNamespace
        self.globals["lipsum"] = _bounded_lipsum
        self.filters["format"] = _bounded_format
        self.filters["center"] = _bounded_center

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        deadline = _current()
        deadline.check()
        if operator == "*":
            _check_product(deadline, left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_printf(deadline, left)
        elif operator == "+":
            deadline.check_size(_sized(left) + _sized(right), "concatenation")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _current().check()
        return super().getattr(obj, attribute)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_str_format(value.__self__)
        return wrapped

    def getitem(self, obj: Any, argument: Any) -> Any:
        _current().check()
        return super().getitem(obj, argument)

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's signature)
        deadline = _current()
        deadline.check()
        for arg in (*args, *kwargs.values()):
            deadline.check_size(_sized(arg), "call argument")
        return super().call(__context, __obj, *args, **kwargs)


def render_bounded(template: jinja2.Template, budget: RenderBudget, context: dict[str, Any]) -> str:
    """Render `template` within `budget`, streaming so the output is capped as it grows."""
    with budgeted(budget) as deadline:
        parts: list[str] = []
        size = 0
        for chunk in template.generate(**context):
            size += len(chunk)
            deadline.check_size(size, "output")
            deadline.check()
            parts.append(chunk)
        return "".join(parts)
