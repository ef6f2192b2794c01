"""How OpenAI-shaped choices say why they ended: the engine's `Finish` as
`finish_reason` and vLLM's `stop_reason`, and back (a backend's answer read by the router)."""

from __future__ import annotations

from triolm.engine.finish import Finish, FinishKind

_KINDS: dict[object, FinishKind] = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}


def openai_finish(finish: Finish | None, called_tools: bool = False) -> tuple[str | None, str | int | None]:
    """(finish_reason, stop_reason) of a choice. A reply holding tool calls finishes with
    "tool_calls", unless the budget cut it short: then "length" says that more (calls or
    text) was coming. `stop_reason` names the stop string or stop token id that matched."""
    if finish is None:
        return None, None
    if finish.cut_short:
        return "length", None
    return ("tool_calls" if called_tools else finish.kind), finish.matched


def finish_of_openai(finish_reason: object, stop_reason: object, last_token: int | None,
                     stop_token_ids: set[int]) -> Finish | None:
    """The `Finish` an OpenAI-compatible backend's choice tells: its `finish_reason` (an
    unknown one reads as "stop"), the stop string or stop token id it matched, and whether
    its last token, one of `stop_token_ids` (EOS or the request's), ended it."""
    if finish_reason is None:
        return None
    kind = _KINDS.get(finish_reason, "stop")
    matched = stop_reason if isinstance(stop_reason, str | int) and not isinstance(stop_reason, bool) else None
    ended_on_token = (kind == "stop" and not isinstance(matched, str) and last_token is not None
                      and last_token in stop_token_ids)
    return Finish(kind, matched=matched, stop_token=last_token if ended_on_token else None)
