"""Property test: whatever a client sends, the server answers with a 2xx or an OpenAI-shaped 4xx, never a
500, and it still serves a normal request afterwards. Requests mix valid values with wrong types,
out-of-range numbers, NaN, odd unicode, nested junk and bodies that are not JSON at all."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import acik
from acik.serve import ServeSettings, build_app
from serve_helpers import LiveServer, make_tiny_model

MODEL = "tiny-chat"

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
ints = st.integers(-3, 12) | st.integers(-(2**70), 2**70)
floats = st.floats(-3, 3) | st.floats()
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "robot"]) | junk},
    optional={"content": st.text(max_size=40) | st.just([{"type": "text", "text": "hi"}]) | junk,
              "name": st.text(max_size=5) | junk, "tool_calls": junk, "tool_call_id": junk},
)
token_ids = st.lists(st.integers(-5, 300) | junk, max_size=8)
COMMON = {
    "model": st.just(MODEL) | st.just("other") | junk,
    "stream": st.booleans() | junk,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | junk}) | junk,
    "max_tokens": ints | junk,
    "temperature": floats | junk,
    "top_p": floats | junk,
    "top_k": ints | junk,
    "min_p": floats | junk,
    "seed": ints | junk,
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=20) | junk,
    "n": ints | junk,
    "presence_penalty": floats | junk,
    "frequency_penalty": floats | junk,
    "repetition_penalty": floats | junk,
    "stop_token_ids": token_ids,
    "logprobs": st.booleans() | ints | junk,
}
chat_body = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=3) | junk},
    optional={**COMMON, "max_completion_tokens": ints | junk, "top_logprobs": ints | junk, "tools": junk,
              "reasoning_effort": st.sampled_from(["low", "high", "extreme"]) | junk},
)
completion_body = st.fixed_dictionaries(
    {"prompt": st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=3) | token_ids
     | st.lists(token_ids, max_size=3) | junk},
    optional={**COMMON, "echo": st.booleans() | junk, "suffix": st.text(max_size=3) | junk, "best_of": ints | junk},
)
requests = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), chat_body.map(lambda b: {"model": MODEL, **b})),
    st.tuples(st.just("/v1/completions"), completion_body.map(lambda b: {"model": MODEL, **b})),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions"]), junk),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models"]), st.binary(max_size=64)),
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    model_dir = make_tiny_model(tmp_path_factory.mktemp("fuzz"))
    # A short context bounds the cost of the requests that happen to be valid.
    app = build_app(ServeSettings(model=str(model_dir), max_batch_size=4, max_seq_len=32), llm=acik.load(model_dir))
    with LiveServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as client:
        yield s, client


def send(client: httpx.Client, path: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"Content-Type": "application/json"})
    return client.post(path, content=json.dumps(body, allow_nan=True), headers={"Content-Type": "application/json"})


def run_fuzz(fuzz_server, examples: int) -> None:
    server, client = fuzz_server
    seen: dict[int, int] = {}

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(requests)
    def check(req):
        path, body = req
        r = send(client, path, body)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, body, r.text)
        if r.status_code != 200:
            err = r.json()["error"]
            assert isinstance(err["message"], str) and err["message"] and "type" in err
        elif r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]")

    check()
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen  # the mix reached both outcomes
    r = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 3,
                                                  "messages": [{"role": "user", "content": "still there?"}]})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert client.get("/health").status_code == 200
    app_state = server.app.state.acik
    assert app_state.in_flight == 0


def test_fuzz_no_500(fuzz_server):
    run_fuzz(fuzz_server, int(os.environ.get("ACIK_FUZZ_EXAMPLES", "1200")))


@pytest.mark.slow
def test_fuzz_no_500_long(fuzz_server):
    run_fuzz(fuzz_server, 20000)
