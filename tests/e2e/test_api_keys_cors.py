"""Several API keys (`--api-key` repeated, `--api-key-file`) and CORS (`--allowed-origins`,
off by default), against real servers with the official `openai` client and httpx.

Clause ids (OAI-AUTH-…, OAI-CORS-…) refer to contracts/openai-compat.md.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from triolm.cli import build_parser, main, settings_from_args
from triolm.http.auth import ApiKeys

APP = "https://app.example"


def test_OAI_AUTH_002_every_configured_key_is_accepted_and_no_other(make_server, served_model, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nk-file-1\n\n  k-file-2  \n")
    srv = make_server(api_key="k-one", extra_api_keys=("k-two",), api_key_file=str(key_file))
    for key in ("k-one", "k-two", "k-file-1", "k-file-2"):
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0)
        assert client.models.list().data[0].id == served_model.name
    for key in ("k-on", "k-onee", "K-ONE", "# team keys", "k-one,k-two", "k-one k-two"):
        r = httpx.get(srv.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 401, key
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(srv.base_url + "/v1/models").status_code == 401
    assert httpx.get(srv.base_url + "/v1/models", headers={"Authorization": "Basic k-one"}).status_code == 401
    assert httpx.get(srv.base_url + "/v1/models", headers={"Authorization": "bearer k-two"}).status_code == 200
    # Anthropic's clients send x-api-key: any of the keys, and only those
    assert httpx.get(srv.base_url + "/v1/models", headers={"x-api-key": "k-file-2"}).status_code == 200
    assert httpx.get(srv.base_url + "/v1/models", headers={"x-api-key": "k-file"}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.base_url + "/v1", api_key="nope", max_retries=0).models.list()


def test_OAI_AUTH_002_keys_from_the_command_line(tmp_path, served_model):
    args = build_parser().parse_args(["serve", "m.gguf", "--api-key", "a", "--api-key", "b",
                                      "--allowed-origins", f"{APP},https://b.example",
                                      "--allowed-origins", "https://c.example"])
    s = settings_from_args(args)
    assert (s.api_key, s.extra_api_keys) == ("a", ("b",))
    assert s.allowed_origins == (APP, "https://b.example", "https://c.example")
    keys = ApiKeys(["a", "b", "a", ""])
    assert len(keys) == 2 and keys.accepts("b") and not keys.accepts("") and not ApiKeys([""])
    # a key file without a key would leave the routes open: serve refuses to start
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    assert main(["serve", served_model.path, "--api-key-file", str(empty)]) == 2
    assert main(["serve", served_model.path, "--api-key-file", str(tmp_path / "missing")]) == 2


def test_OAI_CORS_001_off_by_default(http):
    r = http.get("/v1/models", headers={"Origin": APP})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_OAI_CORS_002_allowed_origins_get_the_headers_preflight_included(make_server, served_model):
    srv = make_server(allowed_origins=(APP,), api_key="k")
    with httpx.Client(base_url=srv.base_url, timeout=60) as http:
        preflight = http.options("/v1/chat/completions", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200  # no key needed: browsers send none
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert {"authorization", "content-type"} <= {
            h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
        auth = {"Origin": APP, "Authorization": "Bearer k"}
        r = http.post("/v1/chat/completions", headers=auth,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
        with http.stream("POST", "/v1/completions", headers=auth,
                         json={"prompt": "hi", "max_tokens": 2, "stream": True}) as stream:
            assert stream.headers["access-control-allow-origin"] == APP
            stream.read()
        # the page can read the errors too
        denied = http.get("/v1/models", headers={"Origin": APP})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == APP
        # another origin gets no grant
        other = http.get("/v1/models", headers={"Origin": "https://evil.example", "Authorization": "Bearer k"})
        assert "access-control-allow-origin" not in other.headers
