"""Supervised fine-tuning data: read records, turn them into chat messages, render them with the model's
chat template, mark the assistant's tokens, then pack or pad them into batches.

Three record formats are read (JSONL, or one JSON array):
- messages: `{"messages": [{"role", "content", "tool_calls"?}, ...], "tools"?}` (OpenAI style), or
  ShareGPT's `{"conversations": [{"from", "value"}, ...], "system"?, "tools"?}`;
- alpaca: `{"instruction", "input"?, "output"}`;
- prompt-completion: a prompt field and a response field (`prompt`/`completion`, `question`/`answer`, ...,
  or any two named with `prompt_field`/`response_field`).

The loss covers exactly the assistant's turns, including the token that ends each turn (`<|im_end|>` in
ChatML). The spans come from rendering the conversation prefix by prefix: the text between "everything
before this turn + the generation prompt" and "everything through this turn" is the turn. Each piece is
tokenized on its own, so the model learns to produce the reply from the same prompt tokens it will
see at inference, where the prompt is tokenized alone and the reply is generated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

IGNORE = -100  # target value that cross-entropy skips

FORMATS = ("auto", "messages", "alpaca", "prompt-completion")

# Prompt/response field pairs recognised by `auto`, in order of preference.
PROMPT_RESPONSE_PAIRS = (("prompt", "completion"), ("prompt", "response"), ("question", "answer"),
                         ("prompt", "answer"), ("input", "output"), ("query", "response"))

# ShareGPT speaker names -> OpenAI roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "chatgpt": "assistant", "bing": "assistant", "system": "system",
                  "function_call": "assistant", "tool_call": "assistant", "observation": "tool",
                  "tool": "tool", "function": "tool", "function_response": "tool"}


class SFTDataError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Reading records


def read_records(path: str | Path) -> list[dict]:
    """Records of a JSONL file (one object per line) or a JSON file holding one array of objects."""
    path = Path(path)
    if not path.is_file():
        raise SFTDataError(f"{path}: no such data file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise SFTDataError(f"{path}: the file is empty; give a JSONL file with one example per line")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise SFTDataError(f"{path}: not valid JSON ({e})") from None
        where = [f"{path}: item {i}" for i in range(len(records))]
    else:
        records, where = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SFTDataError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") \
                    from None
            where.append(f"{path}:{n}")
    for w, r in zip(where, records):
        if not isinstance(r, dict):
            raise SFTDataError(f"{w}: expected a JSON object, got {type(r).__name__}")
    if not records:
        raise SFTDataError(f"{path}: no records in the file")
    return records


def detect_format(record: dict, prompt_field: str | None = None, response_field: str | None = None) -> str:
    if prompt_field or response_field:
        return "prompt-completion"
    if isinstance(record.get("messages"), list) or isinstance(record.get("conversations"), list):
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if any(p in record and r in record for p, r in PROMPT_RESPONSE_PAIRS):
        return "prompt-completion"
    raise SFTDataError(
        f"cannot tell the data format from the first record's keys {sorted(record)}. Known formats: "
        "messages ('messages' or ShareGPT 'conversations'), alpaca ('instruction', 'input', 'output'), "
        "prompt-completion (e.g. 'prompt'/'completion', 'question'/'answer'). For other field names pass "
        "--prompt-field NAME --response-field NAME.")


def _prompt_response_fields(record: dict, prompt_field: str | None, response_field: str | None) -> tuple[str, str]:
    if prompt_field and response_field:
        return prompt_field, response_field
    for p, r in PROMPT_RESPONSE_PAIRS:
        if (prompt_field in (None, p)) and (response_field in (None, r)) and p in record and r in record:
            return p, r
    raise SFTDataError(f"record keys {sorted(record)}: no prompt/response pair found; "
                       "pass both --prompt-field and --response-field")


def _as_tools(value: Any, where: str) -> list[dict] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise SFTDataError(f"{where}: 'tools' is a string but not JSON") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise SFTDataError(f"{where}: 'tools' must be a list of JSON schemas")
    # Accept bare function schemas as well as OpenAI's {"type": "function", "function": {...}}.
    return [t if "function" in t else {"type": "function", "function": t} for t in value]


def _tool_call(value: Any, where: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise SFTDataError(f"{where}: a function_call turn must hold JSON with 'name' and 'arguments'") \
                from None
    if not isinstance(value, dict) or "name" not in value:
        raise SFTDataError(f"{where}: a function_call turn must hold JSON with 'name' and 'arguments'")
    args = value.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    return {"type": "function", "function": {"name": value["name"], "arguments": args}}


def _sharegpt_messages(record: dict, where: str) -> list[dict]:
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for i, turn in enumerate(record["conversations"]):
        speaker = str(turn.get("from", turn.get("role", ""))).lower()
        if speaker not in SHAREGPT_ROLES:
            raise SFTDataError(f"{where}: turn {i}: unknown speaker {speaker!r}; known: {sorted(SHAREGPT_ROLES)}")
        content = turn.get("value", turn.get("content", ""))
        if speaker in ("function_call", "tool_call"):
            call = _tool_call(content, f"{where}: turn {i}")
            # A call right after an assistant text turn belongs to that turn.
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" not in messages[-1]:
                messages[-1]["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": content})
    return messages


def to_messages(record: dict, fmt: str, prompt_field: str | None = None, response_field: str | None = None,
                system_prompt: str | None = None, where: str = "record") -> tuple[list[dict], list[dict] | None]:
    """One record as (chat messages, tools)."""
    tools = _as_tools(record.get("tools"), where)
    if fmt == "messages":
        if isinstance(record.get("messages"), list):
            messages = [dict(m) for m in record["messages"]]
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or "role" not in m:
                    raise SFTDataError(f"{where}: message {i} has no 'role'")
        elif isinstance(record.get("conversations"), list):
            messages = _sharegpt_messages(record, where)
        else:
            raise SFTDataError(f"{where}: format 'messages' needs a 'messages' or 'conversations' list")
    elif fmt == "alpaca":
        if "instruction" not in record or "output" not in record:
            raise SFTDataError(f"{where}: format 'alpaca' needs 'instruction' and 'output' (keys: {sorted(record)})")
        prompt = str(record["instruction"])
        if record.get("input"):
            prompt += "\n\n" + str(record["input"])
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(record["output"])}]
    elif fmt == "prompt-completion":
        p, r = _prompt_response_fields(record, prompt_field, response_field)
        missing = [f for f in (p, r) if f not in record]
        if missing:
            raise SFTDataError(f"{where}: no field {missing[0]!r} (keys: {sorted(record)})")
        messages = [{"role": "user", "content": str(record[p])}, {"role": "assistant", "content": str(record[r])}]
    else:
        raise SFTDataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages, tools


# ---------------------------------------------------------------------------------------------
# Rendering and the assistant mask


def _inline_tools(messages: list[dict], tools: list[dict] | None, template: str) -> tuple[list[dict], list | None]:
    """For a chat template that knows nothing of tools (acik's plain ChatML), write tool definitions into
    the system prompt and tool calls into the assistant text, in the Hermes/Qwen `<tool_call>` style, so
    they are trained on rather than silently dropped."""
    out = [dict(m) for m in messages]
    if "tool_calls" not in template:
        for m in out:
            if m.get("tool_calls"):
                calls = "\n".join("<tool_call>\n" + json.dumps(
                    {"name": c["function"]["name"], "arguments": c["function"].get("arguments", {})},
                    ensure_ascii=False) + "\n</tool_call>" for c in m.pop("tool_calls"))
                m["content"] = (m.get("content") or "") + ("\n" if m.get("content") else "") + calls
    if tools and "tools" not in template:
        block = "# Tools\n\n<tools>\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools) + "\n</tools>"
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0].get('content') or ''}\n\n{block}".lstrip()
        else:
            out.insert(0, {"role": "system", "content": block})
        tools = None
    return out, tools


def render_segments(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant) pieces whose concatenation is the full render."""
    from acik.tokenizer import CHATML_TEMPLATE

    template = tokenizer.chat_template or CHATML_TEMPLATE
    messages, tools = _inline_tools(messages, tools, template)

    def render(msgs: list[dict], gen: bool) -> str:
        if not msgs:
            return ""
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=gen, tools=tools, chat_template=template)

    full = render(messages, False)
    return (_segments_by_prefix(render, messages, full)
            or _segments_by_marker(render, messages, full, _turn_end_strings(tokenizer))
            or _fail())


def _segments_by_prefix(render, messages: list[dict], full: str) -> list[tuple[str, bool]] | None:
    """Exact spans from prefix renders: turn i is the text between "turns before i + the generation
    prompt" and "turns through i". None when the template renders a turn differently once later turns
    follow (Qwen3 drops the empty think block of earlier turns; QwQ's generation prompt opens one)."""
    segments: list[tuple[str, bool]] = []
    done = ""  # the text already assigned to segments
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:i], True)
        through = render(messages[: i + 1], False)
        if not (prompt.startswith(done) and through.startswith(prompt) and full.startswith(through)):
            return None
        # The turn runs to its end token; whitespace the template writes after it is not the model's to say.
        reply = through[len(prompt):].rstrip()
        segments.append((prompt[len(done):], False))
        segments.append((reply, True))
        done = prompt + reply
    segments.append((full[len(done):], False))
    return [(t, a) for t, a in segments if t]


_MARK = "\ue000{}\ue001"  # private-use characters no template touches


def _segments_by_marker(render, messages: list[dict], full: str, ends: list[str]) -> list[tuple[str, bool]] | None:
    """Spans from one render with each assistant content replaced by a marker: a turn is its content
    (and what the template writes after it, e.g. tool calls) through the first turn-end token."""
    marked = [dict(m, content=_MARK.format(i)) if m["role"] == "assistant" else m for i, m in enumerate(messages)]
    text = render(marked, False)
    segments, pos = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        mark = _MARK.format(i)
        at = text.find(mark, pos)
        if at < 0:
            return None
        after = at + len(mark)
        nxt = text.find("\ue000", after)
        limit = nxt if nxt >= 0 else len(text)
        found = [(j, t) for t in ends if (j := text.find(t, after, limit)) >= 0]
        end = min(j + len(t) for j, t in found) if found else after
        segments.append((text[pos:at], False))
        segments.append(((m.get("content") or "") + text[after:end], True))
        pos = end
    segments.append((text[pos:], False))
    if "".join(t for t, _ in segments) != full:
        return None
    return [(t, a) for t, a in segments if t]


def _turn_end_strings(tokenizer: Any) -> list[str]:
    from acik.tokenizer import TURN_END_TOKENS

    names = [tokenizer.id_to_token(i) for i in tokenizer.stop_token_ids]
    return [t for t in dict.fromkeys([*names, *TURN_END_TOKENS]) if t]


def _fail() -> list:
    raise SFTDataError(
        "cannot find the assistant turns in this chat template's output: it renders a turn differently once "
        "later turns follow and changes the message text; train with acik's ChatML template or one whose "
        "history renders like its generation prompt")


@dataclasses.dataclass
class Example:
    ids: list[int]
    mask: list[bool]  # True where the token is the assistant's (a training target)


def tokenize_example(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None) -> Example:
    ids: list[int] = []
    mask: list[bool] = []
    for text, is_assistant in render_segments(tokenizer, messages, tools):
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids.extend(piece)
        mask.extend([is_assistant] * len(piece))
    return Example(ids, mask)


# ---------------------------------------------------------------------------------------------
# A data set: records -> examples, with counted skips


@dataclasses.dataclass
class SFTData:
    examples: list[Example]
    format: str
    stats: Counter  # records read, kept, and every reason for a skip

    @property
    def num_tokens(self) -> int:
        return sum(len(e.ids) for e in self.examples)


def build_examples(records: list[dict], tokenizer: Any, *, fmt: str = "auto", prompt_field: str | None = None,
                   response_field: str | None = None, system_prompt: str | None = None, max_seq_len: int = 1024,
                   too_long: str = "drop", source: str = "data") -> SFTData:
    """Render and tokenize every record. A record with no assistant text, or longer than `max_seq_len`
    with `too_long="drop"`, is skipped and counted; `too_long="truncate"` cuts it to `max_seq_len`
    tokens (and skips it if no assistant token is left)."""
    if too_long not in ("drop", "truncate"):
        raise SFTDataError(f"too_long={too_long!r}: use 'drop' or 'truncate'")
    if fmt not in FORMATS:
        raise SFTDataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(records[0], prompt_field, response_field)
    stats: Counter = Counter(records=len(records))
    examples = []
    for i, record in enumerate(records):
        where = f"{source}: record {i + 1}"
        messages, tools = to_messages(record, fmt, prompt_field, response_field, system_prompt, where)
        if not any(m["role"] == "assistant" and (m.get("content") or m.get("tool_calls")) for m in messages):
            stats["skipped_no_assistant_turn"] += 1
            continue
        ex = tokenize_example(tokenizer, messages, tools)
        if len(ex.ids) > max_seq_len:
            if too_long == "drop":
                stats["skipped_too_long"] += 1
                continue
            ex = Example(ex.ids[:max_seq_len], ex.mask[:max_seq_len])
            if not any(ex.mask[1:]):
                stats["skipped_too_long_no_assistant_left"] += 1
                continue
            stats["truncated"] += 1
        if not any(ex.mask[1:]):  # the first token is never a target
            stats["skipped_no_assistant_turn"] += 1
            continue
        examples.append(ex)
    stats["kept"] = len(examples)
    if not examples:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))
        raise SFTDataError(f"{source}: no usable examples ({reasons}). Records need an assistant turn and must "
                           f"fit in max_seq_len={max_seq_len} tokens (or use --too-long truncate)")
    return SFTData(examples, fmt, stats)


def split_holdout(records: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """A deterministic held-out split: a record is held out when the hash of its content falls below
    `fraction`, so the split depends neither on the seed nor on the order of the file. At least one
    record is held out (and at least one kept)."""
    if not 0 < fraction < 1:
        raise SFTDataError(f"val_fraction={fraction}: must be between 0 and 1")
    if len(records) < 2:
        raise SFTDataError("need at least 2 records to hold some out for validation; pass --val-data")
    keys = [int.from_bytes(hashlib.sha256(json.dumps(r, sort_keys=True).encode()).digest()[:8], "big") / 2**64
            for r in records]
    held = {i for i, k in enumerate(keys) if k < fraction}
    if not held:
        held = {int(np.argmin(keys))}
    if len(held) == len(records):
        held.discard(int(np.argmax(keys)))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


# ---------------------------------------------------------------------------------------------
# Batches


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, T], IGNORE where there is no loss
    positions: torch.Tensor  # [B, T], restarting at 0 for each packed example
    segment_ids: torch.Tensor | None  # [B, T], 1.. per example in a row, 0 for padding; None when unpacked
    num_tokens: int  # real (non-padding) input tokens

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def _inputs_targets(ex: Example) -> tuple[list[int], list[int]]:
    # Inputs are the tokens but the last; each target is the next token where that token is the assistant's.
    return ex.ids[:-1], [t if m else IGNORE for t, m in zip(ex.ids[1:], ex.mask[1:])]


def pack_rows(examples: list[Example], order: list[int], row_len: int) -> list[list[int]]:
    """Greedy packing in the given order: each row is a list of example indices whose inputs fit in `row_len`."""
    rows, row, used = [], [], 0
    for i in order:
        n = len(examples[i].ids) - 1
        if row and used + n > row_len:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += n
    if row:
        rows.append(row)
    return rows


def collate(examples: list[Example], rows: list[list[int]], pad_id: int, packed: bool) -> Batch:
    """Rows of example indices -> one right-padded batch. Packed rows get segment ids and positions that
    restart per example; padding has no targets."""
    T = max(sum(len(examples[i].ids) - 1 for i in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    tgt = torch.full((B, T), IGNORE, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.zeros((B, T), dtype=torch.long)
    total = 0
    for b, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row, 1):
            x, y = _inputs_targets(examples[i])
            n = len(x)
            ids[b, at:at + n] = torch.tensor(x)
            tgt[b, at:at + n] = torch.tensor(y)
            pos[b, at:at + n] = torch.arange(n)
            seg[b, at:at + n] = s
            at += n
        total += at
        if not packed and at < T:  # padding continues the positions so the causal path stays valid
            pos[b, at:] = torch.arange(at, T)
    return Batch(ids, tgt, pos, seg if packed else None, total)


class BatchStream:
    """Training batches as a pure function of (seed, step): epoch e shuffles the examples with
    seed (seed, e), packs or pads them into rows, and cuts the rows into micro-batches. Resuming at a
    step needs nothing but the step."""

    def __init__(self, data: SFTData, *, batch_size: int, seq_len: int, packed: bool, pad_id: int, seed: int):
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.packed, self.pad_id, self.seed = packed, pad_id, seed
        self._epochs: dict[int, list[list[list[int]]]] = {}

    def epoch_batches(self, epoch: int) -> list[list[list[int]]]:
        if epoch not in self._epochs:
            n = len(self.data.examples)
            order = np.random.default_rng([self.seed, epoch]).permutation(n).tolist()
            rows = pack_rows(self.data.examples, order, self.seq_len) if self.packed else [[i] for i in order]
            self._epochs[epoch] = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        return self._epochs[epoch]

    @property
    def batches_per_epoch(self) -> int:
        return len(self.epoch_batches(0))

    def micro_batch(self, index: int) -> Batch:
        """The index-th micro-batch of the endless stream of epochs."""
        # Epochs may differ in length when packing (different orders pack differently); walk them.
        epoch = 0
        while index >= len(self.epoch_batches(epoch)):
            index -= len(self.epoch_batches(epoch))
            epoch += 1
        return collate(self.data.examples, self.epoch_batches(epoch)[index], self.pad_id, self.packed)


def eval_batches(data: SFTData, *, batch_size: int, seq_len: int, packed: bool, pad_id: int,
                 max_batches: int | None = None) -> Iterator[Batch]:
    order = list(range(len(data.examples)))
    rows = pack_rows(data.examples, order, seq_len) if packed else [[i] for i in order]
    for n, i in enumerate(range(0, len(rows), batch_size)):
        if max_batches is not None and n >= max_batches:
            return
        yield collate(data.examples, rows[i:i + batch_size], pad_id, packed)
