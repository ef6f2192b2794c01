"""Structured output and forced tool calls: grammars compiled with llguidance for the
engine's `TokenMatcher` contract (see engine/constraint.py and docs/structured-output.md).

    compiler = GrammarCompiler(tokenizer)                     # one per model, long-lived
    spec = compiler.from_request(response_format=..., tools=..., tool_choice=...,
                                 tool_parser="hermes")       # None: unconstrained
    SamplingParams(..., constraint=spec)                      # engine: spec.new_matcher()

Every new grammar is compiled first in a sandbox child under GrammarLimits (sandbox.py,
compile_worker.py); a grammar past a limit raises GrammarLimitError, a 400 naming it.
"""

from .build import JSON_OPTIONS
from .compiler import GrammarCompiler
from .limits import GrammarLimits
from .llg import CompiledGrammar, LLGuidanceMatcher, llg_tokenizer
from .sandbox import GrammarLimitError

__all__ = ["JSON_OPTIONS", "CompiledGrammar", "GrammarCompiler", "GrammarLimitError", "GrammarLimits",
           "LLGuidanceMatcher", "llg_tokenizer"]
