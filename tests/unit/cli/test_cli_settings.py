"""`triolm serve` flags and TRIOLM_* variables: a flag given wins, a flag left out leaves the
variable (or ServerSettings' default) in charge, and --help shows those defaults."""

from __future__ import annotations

import os

import pytest

from triolm.cli import build_parser, settings_from_args
from triolm.settings import ServerSettings


@pytest.fixture(autouse=True)
def no_triolm_variables(monkeypatch):
    for name in [n for n in os.environ if n.startswith("TRIOLM_")]:
        monkeypatch.delenv(name)


def parse(*argv: str) -> ServerSettings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_a_variable_holds_when_its_flag_is_left_out(monkeypatch):
    monkeypatch.setenv("TRIOLM_MAX_NUM_SEQS", "3")
    monkeypatch.setenv("TRIOLM_PORT", "9123")
    monkeypatch.setenv("TRIOLM_LOG_LEVEL", "warning")
    settings = parse("m.gguf")
    assert (settings.max_num_seqs, settings.port, settings.log_level) == (3, 9123, "warning")
    assert settings.model == "m.gguf"


def test_a_flag_given_wins_over_its_variable(monkeypatch):
    monkeypatch.setenv("TRIOLM_MAX_NUM_SEQS", "3")
    assert parse("m.gguf", "--max-num-seqs", "5").max_num_seqs == 5


def test_without_flags_or_variables_the_settings_defaults_hold():
    assert parse("m.gguf") == ServerSettings(model="m.gguf")


def test_help_shows_the_settings_defaults():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    text = " ".join(serve.format_help().split())
    assert f"(default: {ServerSettings().max_num_seqs})" in text
    assert f"(default: {ServerSettings().graceful_timeout})" in text
