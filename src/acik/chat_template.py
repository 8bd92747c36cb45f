"""Chat templates: render a model's Jinja `chat_template` exactly as `transformers` does, in a sandbox.

Templates come from whoever published the model, so they are untrusted code: they run in Jinja's
`ImmutableSandboxedEnvironment` (no attribute tricks, no mutation of our objects), see only plain
JSON-like data, and get the same helpers transformers gives them (`raise_exception`, `strftime_now`,
a `tojson` that does not HTML-escape, loop controls, `{% generation %}` blocks). The environment
settings (trim_blocks, lstrip_blocks) and the message preprocessing match transformers, so the
rendered string is the same, character for character.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Names under which a message's reasoning arrives. Templates read `reasoning_content` (Qwen) or `thinking`
# (gpt-oss); transformers fills both from whichever is given, so we do too.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    pass


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; renders as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """Jinja's `namespace()`, refusing underscore names so a template cannot reach Python internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (same signature trick as Jinja's)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r}")


class _DictMaker:
    """`dict(...)` for templates, without exposing the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes '<' '>' '&' and sorts keys; chat templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def make_environment() -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja environment chat templates run in."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictMaker()
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    try:
        return make_environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from None


def plain_data(value: Any) -> Any:
    """Rebuild `value` from JSON types only, so a template never sees objects with methods of their own."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic objects, e.g. the OpenAI SDK's messages
        return plain_data(value.model_dump())
    if callable(getattr(value, "item", None)):  # numpy scalars
        return plain_data(value.item())
    return f"<{type(value).__name__}>"


def normalize_messages(messages: Any) -> list[dict]:
    """Messages as plain dicts, keys whose value is None dropped (APIs send `content: null`), and the
    reasoning copied under every name templates read (`thinking`, `reasoning_content`)."""
    out = []
    for message in plain_data(list(getattr(messages, "messages", messages))):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"a chat message must be a dict with 'role' and 'content': {message!r}")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def render_chat_template(template: str, messages: Any, *, tools: list[dict] | None = None,
                         documents: list[dict] | None = None, add_generation_prompt: bool = False,
                         continue_final_message: bool = False, **kwargs: Any) -> str:
    """Render `messages` with `template` as `transformers.apply_chat_template(..., tokenize=False)` does.

    `kwargs` (special tokens such as `bos_token`, and template options such as `reasoning_effort`,
    `enable_thinking`, `date_string`) are passed to the template as variables. `continue_final_message`
    leaves the last message open so the model continues it (prefill).
    """
    if messages is None or len(messages) == 0:
        raise ChatTemplateError("cannot render an empty conversation; pass at least one message.")
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError("continue_final_message and add_generation_prompt exclude each other.")
    if tools is not None:
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise ChatTemplateError(f"tools must be JSON schemas (dicts), got {type(tool).__name__}.")
    if documents is not None and any(not isinstance(d, Mapping) for d in documents):
        raise ChatTemplateError("documents must be dicts with 'title' and 'text'.")
    compiled = compile_template(template)
    chat = normalize_messages(messages)
    final = None
    if continue_final_message:
        final = chat[-1].get("content")
        if not isinstance(final, str):
            raise ChatTemplateError("continue_final_message needs a final message with string content.")
        chat[-1]["content"] = final + _CONTINUE_TAG
    try:
        text = compiled.render(messages=chat, tools=plain_data(tools), documents=plain_data(documents),
                               add_generation_prompt=add_generation_prompt, **plain_data(kwargs))
    except jinja2.exceptions.SecurityError as e:
        raise ChatTemplateError(f"chat template tried something the sandbox forbids: {e}") from None
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template raised an error: {e}") from None
    if final is not None:
        if final.strip() not in text or _CONTINUE_TAG.strip() not in text:
            raise ChatTemplateError("continue_final_message: the template changed the last message.")
        at = text.rindex(_CONTINUE_TAG.strip())
        text = text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
    return text
