"""Helpers shared by the sessions tests (no tests here): a small HTTP client for the
session routes and the fixture that gives each test a clean registry."""

from __future__ import annotations

import httpx
import pytest

MASK = -100


class SessionsAPI:
    def __init__(self, base_url: str, headers: dict | None = None):
        self.http = httpx.Client(base_url=base_url, timeout=120.0, headers=headers or {})

    def create(self, **body) -> str:
        r = self.http.post("/sessions/create", json=body)
        assert r.status_code == 200, r.text
        return r.json()["uuid"]

    def chat(self, uid: str, messages: list[dict], **body) -> dict:
        r = self.http.post(f"/{uid}/v1/chat/completions", json={"messages": messages, **body})
        assert r.status_code == 200, r.text
        return r.json()

    def render(self, uid: str, messages: list[dict], **body) -> dict:
        r = self.http.post(f"/{uid}/v1/chat/completions/render", json={"messages": messages, **body})
        assert r.status_code == 200, r.text
        return r.json()

    def nodes(self, uid: str) -> list[dict]:
        r = self.http.get(f"/{uid}/nodes")
        assert r.status_code == 200, r.text
        return r.json()["nodes"]

    def delete_all(self) -> None:
        for s in self.http.get("/sessions").json()["sessions"]:
            self.http.delete(f"/{s['uuid']}")

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def api(server):
    """The shared server's session routes; every session is deleted after the test."""
    client = SessionsAPI(server.base_url)
    client.delete_all()
    yield client
    client.delete_all()
    client.close()


def eos_after(eos_id: int, n: int) -> dict:
    """Body fields that make the random model write exactly n tokens and then its EOS."""
    return {"min_tokens": n, "max_tokens": n + 4, "logit_bias": {str(eos_id): 100}}


def generated_part(node: dict) -> tuple[list[int], list[float]]:
    """The unmasked positions of a node: (token ids, logprobs)."""
    pairs = [(m, lp) for m, lp in zip(node["masked_tokens"], node["logprobs"], strict=True) if m != MASK]
    return [m for m, _ in pairs], [lp for _, lp in pairs]


def assert_well_formed(node: dict) -> None:
    assert len(node["tokens"]) == len(node["masked_tokens"]) == len(node["logprobs"]) > 0
    for tok, masked, lp in zip(node["tokens"], node["masked_tokens"], node["logprobs"], strict=True):
        if masked == MASK:
            assert lp == 1.0
        else:
            assert masked == tok and lp < 0
