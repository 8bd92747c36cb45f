"""Request bodies of the OpenAI API, as pydantic models (they also make /openapi.json).

Unknown fields are accepted and ignored, as OpenAI-compatible servers do, so clients that send
newer parameters keep working; known fields are checked strictly and a bad value is a 400."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Float = Annotated[float, Field(allow_inf_nan=False)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]
MaxTokens = Annotated[int, Field(ge=0, lt=2**31)]
TokenId = Annotated[StrictInt, Field(ge=0, lt=2**31)]
StopList = Annotated[list[StrictStr], Field(max_length=16)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart | dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None
    reasoning_content: StrictStr | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: StrictStr
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    stop: StrictStr | StopList | None = None
    n: Annotated[int, Field(ge=1, le=1, description="only n=1 is supported")] = 1
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    # Extensions that vLLM and llama-server accept too.
    top_k: Annotated[int, Field(ge=-1, lt=2**31)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    repetition_penalty: Annotated[float, Field(ge=0.01, le=10.0, allow_inf_nan=False)] | None = None
    stop_token_ids: list[TokenId] | None = None
    user: StrictStr | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    # As OpenAI's Responses API spells it: "auto" drops the oldest turns that do not fit the context (the
    # system prompt stays); "disabled" (the default) answers a prompt too long with context_length_exceeded.
    truncation: Literal["auto", "disabled"] | None = None


Prompt = StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(_Sampling):
    prompt: Prompt
    max_tokens: MaxTokens | None = 16
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: StrictStr | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
