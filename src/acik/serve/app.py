"""The OpenAI-compatible API and the chat page, on FastAPI, driving the engine's continuous batching.

The engine runs on its own thread and its handles block, so each request gets a small pump thread
that moves events into an asyncio queue; the event loop never waits on the engine. A client that
goes away cancels its generation at once (a watcher task listens for `http.disconnect`), which frees
its batch slot for the next request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from acik.engine.history import ContextOverflow, fit_conversation, reply_budget
from acik.harmony import HarmonyError
from acik.serve.errors import APIError, install_handlers
from acik.serve.metrics import Metrics
from acik.serve.policy import Policy
from acik.serve.schemas import ChatCompletionRequest, CompletionRequest

# The page loads only its own files and talks only to this server.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.css": "text/css; charset=utf-8",
                "app.js": "text/javascript; charset=utf-8"}


@dataclass
class ServerConfig:
    model_name: str
    max_context: int
    vocab_size: int
    api_key: str | None = None
    max_concurrency: int = 64  # requests admitted at once (running + queued in the engine); more get 429
    cors_origins: list[str] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    owned_by: str = "acik"
    # Sampling options for fields a request leaves out (`LLM.sampling_defaults`): chat, and plain completions.
    chat_defaults: dict = field(default_factory=dict)
    completion_defaults: dict = field(default_factory=dict)


class _State:
    def __init__(self, engine: Any, tokenizer: Any, config: ServerConfig):
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.metrics = Metrics()
        self.created = int(time.time())
        self.in_flight = 0
        self._piece_cache: dict[int, str] = {}

    def piece(self, token_id: int) -> str:
        """One token's text, for logprobs (a lone byte of a multi-byte character shows as U+FFFD)."""
        s = self._piece_cache.get(token_id)
        if s is None:
            s = self.tokenizer.decode([token_id])
            if len(self._piece_cache) < 1 << 18:
                self._piece_cache[token_id] = s
        return s


_DONE = object()


class _Generation:
    """One submitted request: an async iterator of engine events, with cancellation on disconnect."""

    def __init__(self, state: _State, engine_request: Any, http_request: Request | None):
        self.state = state
        self.http_request = http_request
        self.started = time.perf_counter()
        self.first_token: float | None = None  # when the engine gave the first and the last token (pump thread)
        self.last_token: float | None = None
        self.timed_tokens = 0
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        try:
            self.handle = state.engine.submit(engine_request)
        except ValueError as e:
            raise APIError(400, str(e)) from None

    @property
    def prompt_tokens(self) -> int:
        return int(getattr(self.handle, "prompt_tokens", 0) or 0)

    def cancel(self) -> None:
        self.handle.cancel()

    async def events(self) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item: Any) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
                return True
            except RuntimeError:  # the loop is closed (shutdown): nobody is listening any more
                self.cancel()
                return False

        def pump() -> None:
            try:
                for ev in self.handle:
                    if ev.token_id is not None:  # timed here, as the engine makes them, not as the loop relays them
                        now = time.perf_counter()
                        if self.first_token is None:
                            self.first_token = now
                        self.last_token = now
                        self.timed_tokens += 1
                    if not put(ev):
                        return
            except BaseException as e:  # surfaced on the event loop, where it becomes a response
                put(e)
            finally:
                put(_DONE)

        threading.Thread(target=pump, name="acik-serve-pump", daemon=True).start()
        watcher = asyncio.create_task(self._watch_disconnect()) if self.http_request is not None else None
        finished = False
        try:
            while True:
                ev = await queue.get()
                if ev is _DONE:
                    finished = True
                    return
                if isinstance(ev, BaseException):
                    if isinstance(ev, ValueError):
                        raise APIError(400, str(ev))
                    raise ev
                if ev.logprob is not None:
                    ev.logprob = _finite(ev.logprob)
                    ev.top_logprobs = [(t, _finite(v)) for t, v in ev.top_logprobs]
                if ev.token_id is not None:
                    self.completion_tokens += 1
                if ev.finish_reason is not None:
                    self.finish_reason = ev.finish_reason
                yield ev
        finally:
            if watcher is not None:
                watcher.cancel()
            if not finished:
                self.cancel()
            elapsed = time.perf_counter() - self.started
            ttft = None if self.first_token is None else self.first_token - self.started
            self.state.metrics.finished(self.prompt_tokens, self.completion_tokens, self.finish_reason, ttft, elapsed)

    def timings(self) -> dict[str, Any]:
        """The server's own timing of this reply, named as llama-server names it: `prompt_ms` from arrival to
        the first token (queue and prefill), `predicted_ms` from the first token to the last, and
        `predicted_per_second` over those intervals (null under two tokens). Clients that receive tokens in
        bursts (buffering proxies, a busy page) get the rate from here rather than from arrival times."""
        first, last, n = self.first_token, self.last_token, self.timed_tokens
        decode = (last - first) if first is not None and last is not None else 0.0
        return {"prompt_n": self.prompt_tokens,
                "prompt_ms": None if first is None else round((first - self.started) * 1000, 3),
                "predicted_n": self.completion_tokens, "predicted_ms": round(decode * 1000, 3),
                "predicted_per_second": round((n - 1) / decode, 3) if n > 1 and decode > 0 else None}

    async def _watch_disconnect(self) -> None:
        assert self.http_request is not None
        while True:
            message = await self.http_request.receive()
            if message["type"] == "http.disconnect":
                self.cancel()
                return


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [s for s in ([stop] if isinstance(stop, str) else stop) if s]


def _message_text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
        if kind != "text":
            raise APIError(400, f"content part of type {kind!r} is not supported: this model takes text only",
                           param="messages")
        texts.append(part["text"] if isinstance(part, dict) else part.text)
    return "".join(texts)


def create_app(engine: Any, tokenizer: Any, config: ServerConfig) -> FastAPI:
    """The FastAPI app. `engine` follows `acik.engine.Engine`'s contract; the app closes it on shutdown."""
    state = _State(engine, tokenizer, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        close = getattr(state.engine, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    # No /docs or /redoc: they load their scripts from a CDN. The OpenAPI document stays.
    app = FastAPI(title="acik", version=_version(), docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.acik = state
    install_handlers(app)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    app.add_middleware(_HeadersAndCounts, metrics=state.metrics)

    def check_key(request: Request) -> None:
        if not config.api_key:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer YOUR_KEY'",
                           code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != config.model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{config.model_name}'",
                           param="model", code="model_not_found")

    # -- plain endpoints -----------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.model_name}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(check_key)])
    async def get_model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return _model_card()

    def _model_card() -> dict[str, Any]:
        return {"id": config.model_name, "object": "model", "created": state.created, "owned_by": config.owned_by,
                "max_model_len": config.max_context}

    @app.get("/metrics", dependencies=[Depends(check_key)])
    async def metrics() -> Response:
        def gauges() -> dict[str, float]:
            stats = _engine_stats(state.engine)
            return {"acik_requests_in_flight": state.in_flight,
                    "acik_engine_active_requests": stats.get("active", 0),
                    "acik_engine_queue_depth": stats.get("queued", 0),
                    "acik_engine_free_slots": stats.get("free_slots", 0),
                    "acik_engine_steps": stats.get("steps", 0)}

        return Response(state.metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return _static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise APIError(404, f"no such file: {name}")
        return _static(name)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    # -- generation ------------------------------------------------------------------------------
    def admit() -> None:
        if state.in_flight >= config.max_concurrency:
            raise APIError(429, f"the server is busy ({state.in_flight} requests in flight, limit "
                           f"{config.max_concurrency}); retry shortly", code="server_busy",
                           headers={"Retry-After": "1"})

    def check_prompt_ids(ids: list[int], param: str, fix: str = "Shorten the prompt.") -> None:
        if not ids:
            raise APIError(400, "the prompt is empty", param=param)
        bad = next((t for t in ids if t >= config.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is out of range: the vocabulary has {config.vocab_size} tokens",
                           param=param)
        if len(ids) >= config.max_context:
            raise APIError(400, f"this model's maximum context length is {config.max_context} tokens; the prompt "
                           f"has {len(ids)} tokens. {fix}", param=param,
                           code="context_length_exceeded")

    def budget(prompt_len: int, requested: int | None) -> int:
        room = config.max_context - prompt_len
        return room if requested is None else min(requested, room)

    def engine_request(body: Any, prompt_ids: list[int], max_new: int, logprobs: int | None,
                       prompt_logprobs: bool = False, skip_special_tokens: bool = True, chat: bool = False) -> Any:
        from acik.engine import Request as EngineRequest

        defaults = config.chat_defaults if chat else config.completion_defaults

        def pick(name: str, fallback: Any) -> Any:  # the request's value, else the model's or acik's default
            value = getattr(body, name)
            return defaults.get(name, fallback) if value is None else value

        seed = None if body.seed is None else body.seed % (2**63)
        temperature = pick("temperature", 1.0)
        if temperature < 1e-5:  # logits / 1e-30 overflow to inf; below this it is greedy anyway (as vLLM does)
            temperature = 0.0
        top_k = pick("top_k", 0) or 0
        return EngineRequest(
            prompt_ids=prompt_ids, max_new_tokens=max_new,
            temperature=temperature,
            top_p=pick("top_p", 1.0), top_k=max(top_k, 0),
            min_p=pick("min_p", 0.0) or 0.0, repetition_penalty=pick("repetition_penalty", 1.0) or 1.0,
            frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
            seed=seed, stop=_stop_list(body.stop), stop_token_ids=list(body.stop_token_ids or []),
            logprobs=logprobs is not None, top_logprobs=logprobs or 0, prompt_logprobs=prompt_logprobs,
            skip_special_tokens=skip_special_tokens)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        check_model(body.model)
        messages = []
        for m in body.messages:
            msg = m.model_dump(exclude_none=True)
            msg["content"] = _message_text(m.content) or ""
            messages.append(msg)
        kwargs = {"reasoning_effort": body.reasoning_effort} if body.reasoning_effort else {}

        def encode(msgs: list[dict]) -> list[int]:
            try:
                text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tools=body.tools,
                                                     tokenize=False, **kwargs)
            except ValueError as e:
                raise APIError(400, f"could not render the conversation with the model's chat template: {e}",
                               param="messages") from None
            return tokenizer.encode(text, add_special_tokens=False)

        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        dropped = None
        if body.truncation == "auto":
            try:
                fitted = fit_conversation(messages, encode, config.max_context,
                                          reply_budget(config.max_context, requested))
            except ContextOverflow as e:
                raise APIError(400, f"this model's maximum context length is {config.max_context} tokens; the "
                               f"last message comes to {e.tokens} tokens with the chat template (and the system "
                               f"prompt, if any). Shorten the message.",
                               param="messages", code="context_length_exceeded") from None
            prompt_ids, dropped = fitted.prompt_ids, fitted.dropped_messages
        else:
            prompt_ids = encode(messages)
        check_prompt_ids(prompt_ids, "messages", 'Shorten the messages, or send "truncation": "auto" to drop the '
                         'oldest turns.')
        max_new = budget(len(prompt_ids), requested)
        top = (body.top_logprobs or 0) if body.logprobs else None
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        refusal = config.policy.check_input(m.get("content", "") for m in messages if m["role"] != "assistant")
        if refusal is not None:
            return _refusal_chat(cid, body.stream, include_usage, refusal, len(prompt_ids))

        admit()
        state.in_flight += 1
        try:
            # Harmony's channel markers are special tokens; the parser needs to see them.
            harmony = bool(getattr(tokenizer, "is_harmony", False))
            gen = _Generation(state, engine_request(body, prompt_ids, max_new, top, skip_special_tokens=not harmony,
                                                       chat=True),
                              request)
        except BaseException:
            state.in_flight -= 1
            raise
        # How many of the request's messages the model did not see (only with "truncation": "auto").
        extra = {} if dropped is None else {"X-Acik-Dropped-Messages": str(dropped)}
        if body.stream:
            response = _Stream(_chat_stream(gen, cid, include_usage, top), [gen], state)
            response.headers.update(extra)
            return response
        try:
            return JSONResponse(await _chat_full(gen, cid, top), headers=extra)
        finally:
            state.in_flight -= 1

    class _ChatOutput:
        """Turns engine text into (content, reasoning) deltas: harmony channels, stop tokens, the policy."""

        def __init__(self) -> None:
            self.harmony = None
            self.sent = False
            if getattr(tokenizer, "is_harmony", False):
                from acik.harmony import HarmonyStream

                self.harmony = HarmonyStream()
            self.filter = config.policy.output_filter()

        def feed(self, ev: Any) -> tuple[str, str]:
            text = ev.text or ""
            if self.harmony is None:
                return self.filter.feed(text), ""
            content, reasoning = [], []
            try:
                events = self.harmony.feed(text)
            except HarmonyError:  # not (yet) well-formed; the text waits in the parser
                events = []
            for channel, _recipient, delta in events:
                self.sent = True
                (reasoning if channel == "analysis" else content).append(delta)
            return self.filter.feed("".join(content)), config.policy.redact_text("".join(reasoning))

        def finish(self) -> str:
            if self.harmony is not None and not self.sent:
                # The model never produced parseable harmony: show what it wrote rather than nothing.
                return self.filter.feed(self.harmony.text) + self.filter.finish()
            return self.filter.finish()

        @property
        def blocked(self) -> bool:
            return self.filter.blocked

    def _chat_logprob(ev: Any) -> dict[str, Any]:
        token = state.piece(ev.token_id)
        return {"token": token, "logprob": ev.logprob, "bytes": list(token.encode("utf-8")),
                "top_logprobs": [{"token": state.piece(t), "logprob": lp,
                                  "bytes": list(state.piece(t).encode("utf-8"))} for t, lp in ev.top_logprobs]}

    async def _chat_full(gen: _Generation, cid: str, top: int | None) -> dict[str, Any]:
        out = _ChatOutput()
        content, reasoning, lps = [], [], []
        finish = None
        async with aclosing(gen.events()) as events:
            async for ev in events:
                c, r = out.feed(ev)
                content.append(c)
                reasoning.append(r)
                if top is not None and ev.token_id is not None:
                    lps.append(_chat_logprob(ev))
                if out.blocked:
                    gen.cancel()
                    finish = "content_filter"
                    break
                finish = ev.finish_reason or finish
        content.append(out.finish())
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
        if any(reasoning):
            message["reasoning_content"] = "".join(reasoning)
        choice = {"index": 0, "message": message, "logprobs": {"content": lps} if top is not None else None,
                  "finish_reason": _finish(finish)}
        return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": config.model_name,
                "choices": [choice], "usage": _usage(gen.prompt_tokens, gen.completion_tokens),
                "system_fingerprint": None, "timings": gen.timings()}

    async def _chat_stream(gen: _Generation, cid: str, include_usage: bool, top: int | None) -> AsyncIterator[str]:
        created = int(time.time())
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": config.model_name,
                "system_fingerprint": None}

        def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, **extra: Any) -> str:
            obj = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                   **extra}
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        out = _ChatOutput()
        yield chunk({"role": "assistant", "content": ""})
        finish = None
        async with aclosing(gen.events()) as events:
            async for ev in events:
                c, r = out.feed(ev)
                lp = {"content": [_chat_logprob(ev)]} if top is not None and ev.token_id is not None else None
                delta: dict[str, Any] = {}
                if r:
                    delta["reasoning_content"] = r
                if c:
                    delta["content"] = c
                if delta or lp:
                    yield chunk(delta, logprobs=lp)
                if out.blocked:
                    gen.cancel()
                    finish = "content_filter"
                    break
                finish = ev.finish_reason or finish
        rest = out.finish()
        if rest:
            yield chunk({"content": rest})
        # An extra top-level field, as llama-server sends: OpenAI clients keep or ignore it.
        yield chunk({}, _finish(finish), timings=gen.timings())
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(gen.prompt_tokens, gen.completion_tokens)})
        yield "data: [DONE]\n\n"

    def _refusal_chat(cid: str, stream: bool, include_usage: bool, refusal: str, prompt_len: int) -> Response:
        base = {"id": cid, "created": int(time.time()), "model": config.model_name, "system_fingerprint": None}
        usage = _usage(prompt_len, 0)
        if not stream:
            return JSONResponse({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": refusal}, "logprobs": None,
                 "finish_reason": "content_filter"}]})
        extra = {"usage": None} if include_usage else {}
        events = [
            _sse({**base, "object": "chat.completion.chunk", **extra, "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": refusal}, "logprobs": None,
                 "finish_reason": None}]}),
            _sse({**base, "object": "chat.completion.chunk", **extra, "choices": [
                {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "content_filter"}]}),
        ]
        if include_usage:
            events.append(_sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
        events.append("data: [DONE]\n\n")
        return StreamingResponse(iter(events), media_type="text/event-stream")

    # -- legacy completions (what log-likelihood evaluators use) -------------------------------------
    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check_model(body.model)
        if body.suffix:
            raise APIError(400, "'suffix' is not supported", param="suffix")
        prompt = body.prompt
        if isinstance(prompt, str):
            prompts: list[list[int] | str] = [prompt]
        elif prompt and isinstance(prompt[0], list):
            prompts = list(prompt)
        elif prompt and isinstance(prompt[0], int):
            prompts = [prompt]
        else:
            prompts = list(prompt)
        if not prompts:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(prompts) > config.max_concurrency:
            raise APIError(400, f"at most {config.max_concurrency} prompts per request", param="prompt")
        encoded: list[list[int]] = []
        for p in prompts:
            ids = tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else list(p)
            check_prompt_ids(ids, "prompt")
            encoded.append(ids)
        if body.max_tokens == 0 and not body.echo:
            raise APIError(400, "max_tokens 0 only makes sense with echo (to score the prompt)", param="max_tokens")
        refusal = config.policy.check_input(p for p in prompts if isinstance(p, str))
        cid = f"cmpl-{uuid.uuid4().hex[:24]}"
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if refusal is not None:
            choices = [{"index": i, "text": refusal, "logprobs": None, "finish_reason": "content_filter"}
                       for i in range(len(prompts))]
            return JSONResponse({"id": cid, "object": "text_completion", "created": int(time.time()),
                                 "model": config.model_name, "choices": choices,
                                 "usage": _usage(sum(map(len, encoded)), 0)})
        admit()
        state.in_flight += 1
        gens: list[_Generation] = []
        try:
            want_prompt_lp = body.echo and body.logprobs is not None
            for ids in encoded:
                max_new = budget(len(ids), body.max_tokens)
                gens.append(_Generation(state, engine_request(body, ids, max_new, body.logprobs, want_prompt_lp),
                                        request))
        except BaseException:
            for g in gens:
                g.cancel()
            state.in_flight -= 1
            raise
        if body.stream:
            return _Stream(_completion_stream(gens, encoded, prompts, body, cid, include_usage), gens, state)
        try:
            results = await asyncio.gather(*(_completion_one(g, i, ids, p, body)
                                             for i, (g, ids, p) in enumerate(zip(gens, encoded, prompts))))
        finally:
            for g in gens:
                g.cancel()
            state.in_flight -= 1
        return JSONResponse({"id": cid, "object": "text_completion", "created": int(time.time()),
                             "model": config.model_name, "choices": list(results), "system_fingerprint": None,
                             "usage": _usage(sum(g.prompt_tokens for g in gens),
                                             sum(g.completion_tokens for g in gens))})

    def _prompt_logprobs(gen: _Generation, ids: list[int], n: int) -> tuple[list, list, list]:
        """Echoed prompt tokens with their logprobs (the first has none: nothing comes before it)."""
        scores = [_finite(x) for x in (getattr(gen.handle, "prompt_logprobs", None) or [None] * len(ids))]
        tops_src = getattr(gen.handle, "prompt_top_logprobs", None)
        tokens = [state.piece(t) for t in ids]
        tops: list[dict[str, float] | None] = []
        for i, (t, lp) in enumerate(zip(ids, scores)):
            if lp is None:
                tops.append(None)
                continue
            d: dict[str, float] = {}
            if tops_src is not None and tops_src[i]:
                for tt, tlp in tops_src[i][:n]:
                    d[state.piece(tt)] = _finite(tlp)
            d.setdefault(state.piece(t), lp)
            tops.append(d)
        return tokens, scores, tops

    async def _completion_one(gen: _Generation, index: int, ids: list[int], prompt: Any,
                              body: CompletionRequest) -> dict[str, Any]:
        filt = config.policy.output_filter()
        texts, tokens, lps, tops = [], [], [], []
        finish = None
        async with aclosing(gen.events()) as events:
            async for ev in events:
                texts.append(filt.feed(ev.text or ""))
                if ev.token_id is not None and body.logprobs is not None:
                    tokens.append(state.piece(ev.token_id))
                    lps.append(ev.logprob)
                    d = {state.piece(t): lp for t, lp in ev.top_logprobs}
                    d.setdefault(tokens[-1], ev.logprob)
                    tops.append(d)
                if filt.blocked:
                    gen.cancel()
                    finish = "content_filter"
                    break
                finish = ev.finish_reason or finish
        texts.append(filt.finish())
        text = "".join(texts)
        logprobs = None
        if body.echo:
            prompt_text = prompt if isinstance(prompt, str) else tokenizer.decode(ids)
            text = prompt_text + text
            if body.logprobs is not None:
                p_tokens, p_lps, p_tops = _prompt_logprobs(gen, ids, body.logprobs)
                tokens, lps, tops = p_tokens + tokens, p_lps + lps, p_tops + tops
        if body.logprobs is not None:
            offsets, pos = [], 0
            for t in tokens:
                offsets.append(pos)
                pos += len(t)
            logprobs = {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
        if finish is None and gen.completion_tokens == 0:
            finish = "length"
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": _finish(finish)}

    async def _completion_stream(gens: list[_Generation], encoded: list[list[int]], prompts: list[Any],
                                 body: CompletionRequest, cid: str, include_usage: bool) -> AsyncIterator[str]:
        base = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": config.model_name,
                "system_fingerprint": None}
        extra = {"usage": None} if include_usage else {}
        try:
            for index, (gen, ids, prompt) in enumerate(zip(gens, encoded, prompts)):
                if body.echo:
                    echo = prompt if isinstance(prompt, str) else tokenizer.decode(ids)
                    yield _sse({**base, **extra, "choices": [{"index": index, "text": echo, "logprobs": None,
                                                              "finish_reason": None}]})
                filt = config.policy.output_filter()
                finish = None
                async with aclosing(gen.events()) as events:
                    async for ev in events:
                        text = filt.feed(ev.text or "")
                        lp = None
                        if body.logprobs is not None and ev.token_id is not None:
                            tok = state.piece(ev.token_id)
                            lp = {"tokens": [tok], "token_logprobs": [ev.logprob],
                                  "top_logprobs": [{state.piece(t): v for t, v in ev.top_logprobs}], "text_offset": [0]}
                        if text or lp:
                            yield _sse({**base, **extra, "choices": [{"index": index, "text": text, "logprobs": lp,
                                                                      "finish_reason": None}]})
                        if filt.blocked:
                            gen.cancel()
                            finish = "content_filter"
                            break
                        finish = ev.finish_reason or finish
                rest = filt.finish()
                yield _sse({**base, **extra, "choices": [{"index": index, "text": rest, "logprobs": None,
                                                          "finish_reason": _finish(finish or "length")}]})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(sum(g.prompt_tokens for g in gens),
                                                                   sum(g.completion_tokens for g in gens))})
            yield "data: [DONE]\n\n"
        finally:
            for g in gens:
                g.cancel()

    return app


class _HeadersAndCounts:
    """Adds the security headers to every response and counts API responses by status.

    A plain ASGI middleware: starlette's BaseHTTPMiddleware wraps `receive` so that it reports a
    disconnect while a streamed response is still going, which would cancel live generations."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.lower().encode() not in present]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
                if path.startswith("/v1/"):
                    self.metrics.request(path, message["status"])
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Stream(StreamingResponse):
    """An SSE response that, however it ends (done, client gone, server shutting down, even before
    the first chunk), cancels its generations and gives back its admission slot."""

    def __init__(self, content: AsyncIterator[str], gens: list[_Generation], state: _State):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.gens = gens
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for g in self.gens:
                g.cancel()
            self.state.in_flight -= 1


def _finite(x: float | None) -> float | None:
    # JSON has no -Infinity; OpenAI reports impossible tokens as -9999.
    return x if x is None or math.isfinite(x) else -9999.0


def _finish(reason: str | None) -> str:
    # "cancelled" only reaches a client that is still there when the server shuts down.
    return {"stop": "stop", "length": "length", "content_filter": "content_filter"}.get(reason or "", "stop")


def _engine_stats(engine: Any) -> dict[str, Any]:
    try:
        return dict(engine.stats())
    except Exception:  # metrics must never fail a scrape
        return {}


def _static(name: str) -> Response:
    data = files("acik.serve").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


def _version() -> str:
    from acik.version import __version__

    return __version__
