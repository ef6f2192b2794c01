"""Resource limits of one grammar: llguidance's own parser/lexer limits plus the
wall-clock and memory budget of its first compile (see compile_worker.py).

Defaults leave a margin over what legitimate grammars need, measured with
`scripts/bench_grammar_limits.py` on the 131k Tekken vocabulary: a 50-property nested
object schema still works with every limit divided by 8, a 500-value enum and a 30-tool
agent toolbox divided by 32, guided_choice with 2,000 entries divided by 16; 20,000
entries fit the defaults, 100,000 do not (docs/grammar-limits.md).
"""

from __future__ import annotations

import attrs
import llguidance


@attrs.frozen
class GrammarLimits:
    # llguidance.LLParserLimits (names and meaning as there)
    max_grammar_size: int = 500_000  # symbols in all productions
    max_items_in_row: int = 2_000  # Earley items in one parser row (branching)
    step_max_items: int = 50_000  # Earley items per mask step
    initial_lexer_fuel: int = 300_000  # regex work building the first lexer states
    step_lexer_fuel: int = 50_000  # regex work per mask step: bounds a step's stall
    max_lexer_states: int = 20_000  # lexer DFA states (1-2 kB each): bounds a grammar's memory
    # the first compile, in the sandbox child
    compile_timeout: float = 2.0  # seconds
    compile_memory: int = 512 << 20  # bytes the child may map beyond its start-up size

    def parser_limits(self) -> llguidance.LLParserLimits:
        return llguidance.LLParserLimits(**self.parser_kwargs())

    def parser_kwargs(self) -> dict:
        return {"max_grammar_size": self.max_grammar_size, "max_items_in_row": self.max_items_in_row,
                "step_max_items": self.step_max_items, "initial_lexer_fuel": self.initial_lexer_fuel,
                "step_lexer_fuel": self.step_lexer_fuel, "max_lexer_states": self.max_lexer_states,
                "verbose_errors": False}  # verbose errors would echo parser state into responses
