"""`LLM.generate` and `LLM.chat` on the LLM's shared engine; the terminal commands are in `acik.engine.cli`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from acik.engine.scheduler import Engine, Handle, Request

SAMPLING_KEYS = tuple(f.name for f in fields(Request) if f.name not in ("prompt_ids",))


def get_engine(llm, **kwargs: Any) -> Engine:
    """The LLM's shared engine (created on first use, and anew after `close()`; options apply only then)."""
    engine = getattr(llm, "_engine", None)
    if engine is None or engine.closed:
        engine = llm._engine = Engine(llm, **kwargs)
    return engine


def sampling_defaults(llm, chat: bool) -> dict[str, Any]:
    """The model's sampling defaults, else acik's (`LLM.sampling_defaults`); {} for a stand-in without them."""
    method = getattr(llm, "sampling_defaults", None)
    return method(chat=chat) if method else {}


def make_request(ids: list[int], sampling: dict[str, Any]) -> Request:
    unknown = set(sampling) - set(SAMPLING_KEYS)
    if unknown:
        raise TypeError(f"unknown generation option(s) {sorted(unknown)}; known: {', '.join(SAMPLING_KEYS)}")
    return Request(prompt_ids=list(ids), **sampling)


def _stream_text(handle: Handle) -> Iterator[str]:
    try:
        for ev in handle:
            if ev.text:
                yield ev.text
    finally:  # a consumer that stops early cancels the request
        if not handle.finished:
            handle.cancel()


def _stream_ids(handle: Handle) -> Iterator[int]:
    try:
        for ev in handle:
            if ev.token_id is not None:
                yield ev.token_id
    finally:
        if not handle.finished:
            handle.cancel()


def generate(llm, prompt, stream: bool = False, **sampling: Any):
    """See `LLM.generate`."""
    is_ids = isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int))
    batch = isinstance(prompt, list) and not is_ids
    prompts = prompt if batch else [prompt]
    if stream and batch:
        raise ValueError("stream=True takes one prompt, not a batch")
    sampling = {**sampling_defaults(llm, chat=False), **sampling}
    engine = get_engine(llm)
    handles = []
    for p in prompts:
        ids = list(p) if not isinstance(p, str) else llm.tokenizer.encode(p)
        handles.append(engine.submit(make_request(ids, sampling)))
    if stream:
        return _stream_ids(handles[0]) if is_ids else _stream_text(handles[0])
    outs = []
    for p, h in zip(prompts, handles):
        events = list(h)
        if isinstance(p, str):
            outs.append("".join(ev.text for ev in events))
        else:
            outs.append(list(h.token_ids))
    return outs if batch else outs[0]


def chat_prompt_ids(llm, messages: list[dict], **template_kwargs: Any) -> list[int]:
    tok = llm.tokenizer
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_kwargs)
    return tok.encode(text, add_special_tokens=False)


def chat_ids(llm, messages: list[dict], truncation: str | None, max_new_tokens: int | None) -> list[int]:
    """The prompt of `LLM.chat`: with `truncation="auto"` the oldest turns that do not fit are left out
    (`acik.engine.history`); otherwise a conversation too long for the context is an error that says so."""
    from acik.engine.history import ContextOverflow, fit_conversation, reply_budget

    if truncation not in (None, "disabled", "auto"):
        raise ValueError(f"truncation={truncation!r}: use 'auto' (drop the oldest turns to fit the context; the "
                         f"system prompt stays) or 'disabled'")
    context = get_engine(llm).max_seq_len
    if truncation == "auto":
        try:
            return fit_conversation(messages, lambda m: chat_prompt_ids(llm, m), context,
                                    reply_budget(context, max_new_tokens)).prompt_ids
        except ContextOverflow as e:
            raise ValueError(f"{e}; shorten the last message") from None
    ids = chat_prompt_ids(llm, messages)
    if len(ids) >= context:
        raise ValueError(f"the conversation has {len(ids)} tokens but the context holds {context} (engine "
                         f"max_seq_len); pass truncation='auto' to drop the oldest turns (the system prompt stays)")
    return ids


def chat(llm, messages: list[dict], stream: bool = False, truncation: str | None = None, **sampling: Any):
    """See `LLM.chat`."""
    tok = llm.tokenizer
    sampling = {**sampling_defaults(llm, chat=True), **sampling}
    if sampling.get("truncate") and truncation is None:  # the engine keeps the prompt's last tokens, whatever they are
        ids = chat_prompt_ids(llm, messages)
    else:
        ids = chat_ids(llm, messages, truncation, sampling.get("max_new_tokens", Request.max_new_tokens))
    if tok.is_harmony:
        sampling.setdefault("skip_special_tokens", False)
    handle = get_engine(llm).submit(make_request(ids, sampling))
    if stream:
        if tok.is_harmony:
            return _harmony_final(_stream_text(handle))
        return _stream_text(handle)
    text = "".join(ev.text for ev in handle)
    return harmony_reply(text)["content"] if tok.is_harmony else text


def harmony_reply(text: str) -> dict[str, Any]:
    """The assistant message in gpt-oss's harmony output (the raw text if it is not valid harmony)."""
    from acik.harmony import HarmonyError, parse_harmony, to_chat_message

    try:
        return to_chat_message(parse_harmony(text))
    except HarmonyError:
        return {"role": "assistant", "content": text}


def _harmony_final(pieces: Iterator[str]) -> Iterator[str]:
    from acik.harmony import HarmonyError, HarmonyStream

    parser: HarmonyStream | None = HarmonyStream()
    for piece in pieces:
        if parser is None:
            yield piece
            continue
        try:
            for channel, _, delta in parser.feed(piece):
                if channel == "final":
                    yield delta
        except HarmonyError:  # not harmony after all: pass the text through
            parser = None
            yield piece
