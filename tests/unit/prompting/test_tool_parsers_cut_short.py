"""Tool-call parsers on replies cut short by max_tokens (clause HOSTILE-VAL-007 of
contracts/hostile-input.md, at the parser level): at every cut point, the
calls completed before the cut are kept and no markup fragment becomes content —
parsed whole or streamed character by character."""

from __future__ import annotations

import json

import pytest

from triolm.prompting.tool_parsers import TOOL_PARSERS, aggregate, get_tool_parser

CALLS = [("get_weather", {"city": "Paris", "unit": "celsius"}), ("search", {"q": "tea <b>", "limit": 3})]
LEAD = {"hermes": "Let me check.\n", "mistral": "Let me check.", "llama3_json": ""}


def _streamed(parser, text: str):
    stream = parser.streaming()
    events = []
    for ch in text:
        events += stream.push(ch)
    return aggregate(events + stream.finish(cut_short=True))


@pytest.mark.parametrize("name", [n for n in TOOL_PARSERS if n in LEAD])
def test_HOSTILE_VAL_007_every_cut_keeps_complete_calls_and_no_fragment(name):
    parser = get_tool_parser(name)
    lead = LEAD[name]
    text = lead + parser.format.render_calls(CALLS)
    full = parser.parse(text)
    assert [(c.name, json.loads(c.arguments)) for c in full.tool_calls] == CALLS
    kept_counts = set()
    for cut in range(len(text) + 1):
        prefix = text[:cut]
        parsed = parser.parse(prefix, cut_short=True)
        calls = [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls]
        assert calls == CALLS[:len(calls)], (cut, prefix)
        kept_counts.add(len(calls))
        # content is the lead text (or a part of it), never markup
        assert (parsed.content or "").strip() in lead.strip(), (cut, prefix, parsed.content)
        streamed = _streamed(parser, prefix)
        assert (streamed.content or "").strip() in lead.strip(), (cut, prefix, streamed.content)
        # a streamed call is sent once its name is known: the complete ones match
        assert [(c.name, json.loads(c.arguments)) for c in streamed.tool_calls[:len(calls)]] == calls
    assert kept_counts == {0, 1, 2}
