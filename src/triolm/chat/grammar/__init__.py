"""Structured output and forced tool calls: grammars compiled with llguidance for the
engine's `TokenMatcher` contract (see engine/constraint.py and docs/structured-output.md).

    compiler = GrammarCompiler(tokenizer)                     # one per model, long-lived
    spec = compiler.from_request(response_format=..., tools=..., tool_choice=...,
                                 tool_parser="hermes")       # None: unconstrained
    SamplingParams(..., constraint=spec)                      # engine: spec.new_matcher()
"""

from .build import JSON_OPTIONS
from .compiler import GrammarCompiler
from .llg import CompiledGrammar, LLGuidanceMatcher, llg_tokenizer

__all__ = ["JSON_OPTIONS", "CompiledGrammar", "GrammarCompiler", "LLGuidanceMatcher", "llg_tokenizer"]
