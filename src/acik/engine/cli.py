"""The `acik generate` and `acik chat` commands: sampling flags and recipes, and the terminal chat loop."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from acik import fmt
from acik.engine.generate import chat_prompt_ids, get_engine, harmony_reply, make_request, sampling_defaults
from acik.loader import load
from acik.models import MODEL_HELP


@dataclass
class GenerateRecipe:
    max_new_tokens: int = 256
    temperature: float | None = None  # None: the model's default, else acik's chat default (LLM.sampling_defaults)
    top_p: float | None = None
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    dtype: str = "auto"
    max_seq_len: int | None = None
    compile: bool = False
    optimize: bool = True  # fused projections, prepacked CPU weights (acik.model.inference)
    system: str | None = None
    policy: str | None = None  # guardrails YAML (acik.serve.policy), for `acik chat`


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="YAML recipe with sampling settings (keys: the flags below)")
    p.add_argument("--set", action="append", help="override a recipe key: key=value")
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate at most (default 256)")
    p.add_argument("--temperature", type=float, help="0 is greedy (default: the model's own, else 0.2)")
    p.add_argument("--top-p", type=float, help="sample from the most likely tokens whose probabilities add up to P "
                   "(default: the model's own, else 0.9; 1 is off)")
    p.add_argument("--top-k", type=int, help="sample from the K most likely tokens (default 0: off)")
    p.add_argument("--min-p", type=float, help="drop tokens under P times the most likely one's probability "
                   "(default 0: off)")
    p.add_argument("--repetition-penalty", type=float, help="above 1, tokens already in the prompt or reply are "
                   "less likely (default 1: off)")
    p.add_argument("--frequency-penalty", type=float, help="lower each token's score by this times its count in "
                   "the reply, as OpenAI's API does (default 0)")
    p.add_argument("--presence-penalty", type=float, help="lower the score of every token already in the reply "
                   "by this, as OpenAI's API does (default 0)")
    p.add_argument("--seed", type=int, help="sampling seed: the same seed gives the same reply (default: random)")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--dtype", help="auto (checkpoint's), float32, bfloat16")
    p.add_argument("--max-seq-len", type=int, help="context per sequence (default: model's, at most 4096)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the decode step (faster per token after a first reply that compiles)")
    p.add_argument("--no-optimize", dest="optimize", action="store_false", default=None,
                   help="keep the model as loaded: no fused projections or prepacked weights (slower on CPU)")


def _recipe(args: argparse.Namespace) -> GenerateRecipe:
    from acik.engine.sampling import check_sampling
    from acik.recipe import load_recipe

    flags = {f.name: getattr(args, f.name, None) for f in fields(GenerateRecipe)}
    r = load_recipe(GenerateRecipe, args.recipe, args.set, **flags)
    # Now, not at the first message: the engine would refuse every request, after the model loaded.
    check_sampling(_sampling(r), spell=lambda key: "--" + key.replace("_", "-"))
    if r.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {r.max_new_tokens}")
    if r.max_seq_len is not None and r.max_seq_len < 2:
        raise ValueError(f"--max-seq-len must be at least 2, got {r.max_seq_len}")
    return r


def _sampling(r: GenerateRecipe, llm=None) -> dict[str, Any]:
    """The recipe's sampling options; those it leaves unset come from the model's defaults (given `llm`)."""
    given = dict(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                 min_p=r.min_p, repetition_penalty=r.repetition_penalty, frequency_penalty=r.frequency_penalty,
                 presence_penalty=r.presence_penalty, seed=r.seed, stop=list(r.stop))
    defaults = sampling_defaults(llm, chat=True) if llm is not None else {}
    return {**defaults, **{k: v for k, v in given.items() if v is not None}}


def _load(name: str, r: GenerateRecipe):
    llm = load(name, dtype=r.dtype, optimize=r.optimize)
    get_engine(llm, max_batch_size=1, max_seq_len=r.max_seq_len, compile=r.compile)
    return llm


def _cmd_generate(args: argparse.Namespace) -> int:
    r = _recipe(args)
    llm = _load(args.model, r)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    t0, n = time.perf_counter(), 0
    ids, context = llm.tokenizer.encode(prompt), get_engine(llm).max_seq_len
    if len(ids) >= context:  # the engine's own message names a Python argument, not a flag
        raise ValueError(f"the prompt has {len(ids)} tokens but the context holds {context}; "
                         f"{_cli_context_hint(llm, context, 'shorten it')}")
    handle = get_engine(llm).submit(make_request(ids, _sampling(r, llm)))
    for ev in handle:
        print(ev.text, end="", flush=True)
    llm.close()
    n = handle.completion_tokens
    print()
    if args.verbose:
        dt = time.perf_counter() - t0
        print(f"[{handle.prompt_tokens} prompt + {fmt.count(n, 'new token')}, {n / dt:.1f} tokens/s, "
              f"finish: {handle.finish_reason}]", file=sys.stderr)
    return 0


CHAT_HELP = """Type a message; end it with an empty line (or a line with just '.') to send.
Commands: /reset (new conversation), /system TEXT (set the system prompt and reset),
/save FILE (write the conversation as JSON), /help, /quit (or Ctrl-D)."""


def _read_message(inp, out) -> str | None:
    """Multi-line input: lines until an empty line (a single-line command is sent at once)."""
    lines: list[str] = []
    out.write(">>> ")
    out.flush()
    while True:
        line = inp.readline()
        if not line:  # EOF
            return "\n".join(lines) if lines else None
        line = line.rstrip("\n")
        if not lines and line.startswith("/"):
            return line
        if line in ("", ".") and lines:
            return "\n".join(lines)
        if line == "" and not lines:
            out.write(">>> ")
            out.flush()
            continue
        lines.append(line)
        out.write("... ")
        out.flush()


def chat_loop(llm, sampling: dict[str, Any], system: str | None = None, inp=None, out=None, policy=None) -> None:
    """The interactive chat of `acik chat` (reads `inp`, writes `out`). `policy` (an
    `acik.serve.policy.Policy`) refuses blocked input and filters the streamed reply, as `acik serve` does."""
    from acik.engine.history import ContextOverflow, fit_conversation, overflow_notice, reply_budget
    from acik.harmony import HarmonyError, HarmonyStream

    inp, out = inp or sys.stdin, out or sys.stdout
    tok = llm.tokenizer
    harmony = tok.is_harmony
    context = get_engine(llm).max_seq_len
    reserve = reply_budget(context, sampling.get("max_new_tokens"))
    told_dropping = False  # the notice that old turns are left out comes once a session

    def fresh() -> list[dict]:
        return [{"role": "system", "content": system}] if system else []

    messages = fresh()  # the whole conversation (what /save writes); the model sees its newest part that fits
    out.write(CHAT_HELP + "\n")
    while True:
        text = _read_message(inp, out)
        if text is None:
            out.write("\n")
            return
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            if cmd in ("/quit", "/exit", "/bye"):
                return
            if cmd == "/reset":
                messages = fresh()
                out.write("(conversation reset)\n")
            elif cmd == "/system":
                system = arg.strip() or None
                messages = fresh()
                out.write(f"(system prompt {'set' if system else 'cleared'}; conversation reset)\n")
            elif cmd == "/save":
                path = Path(arg.strip() or "chat.json")
                path.write_text(json.dumps({"messages": messages}, ensure_ascii=False, indent=2) + "\n",
                                encoding="utf-8")
                out.write(f"(saved {len(messages)} messages to {path})\n")
            elif cmd == "/help":
                out.write(CHAT_HELP + "\n")
            else:
                out.write(f"unknown command {cmd}; /help lists them\n")
            continue
        refusal = policy.check_input([text]) if policy is not None else None
        if refusal is not None:  # not added to the conversation: the model never sees it
            out.write(f"{refusal}\n")
            continue
        filt = policy.output_filter() if policy is not None else None
        try:
            fitted = fit_conversation(messages + [{"role": "user", "content": text}],
                                      lambda m: chat_prompt_ids(llm, m), context, reserve)
        except ContextOverflow as e:  # not added to the conversation, which goes on
            out.write(f"({e}; {_cli_context_hint(llm, context, 'shorten the message')}; the conversation "
                      f"goes on without it)\n")
            continue
        if fitted.dropped_turns and not told_dropping:
            out.write(overflow_notice(context) + "\n")
            told_dropping = True
        messages.append({"role": "user", "content": text})
        ids = fitted.prompt_ids
        req = make_request(ids, {**sampling, **({"skip_special_tokens": False} if harmony else {})})
        t0 = time.perf_counter()
        first = None
        handle = get_engine(llm).submit(req)
        reply = visible = ""
        parser = HarmonyStream() if harmony else None
        shown = None
        try:
            for ev in handle:
                if first is None:
                    first = time.perf_counter()
                reply += ev.text
                if parser is not None:  # gpt-oss: reasoning (analysis channel) shown apart from the answer
                    try:
                        for channel, _, delta in parser.feed(ev.text):
                            kind = "final" if channel == "final" else "thinking"
                            if kind != shown:
                                out.write("\n[thinking] " if kind == "thinking" else "\n[answer] ")
                                shown = kind
                            out.write(filt.feed(delta) if filt else delta)
                    except HarmonyError:  # malformed harmony: show the raw text from here on
                        parser = None
                if parser is None:
                    piece = filt.feed(ev.text) if filt else ev.text
                    visible += piece
                    out.write(piece)
                out.flush()
                if filt and filt.blocked:  # a blocked pattern ends the reply, in either path
                    handle.cancel()
                    break
        except KeyboardInterrupt:
            handle.cancel()
            out.write("\n(interrupted)")
        if filt:
            rest = filt.finish()
            visible += rest
            out.write(rest)
            if filt.blocked:
                out.write("\n(stopped by the policy)")
            if not harmony:  # the conversation keeps what the user saw
                reply = visible
        dt = time.perf_counter() - (first or t0)
        n = handle.completion_tokens
        rate = (n - 1) / dt if n > 1 and dt > 0 else 0.0
        out.write(f"\n[{fmt.count(n, 'token')}, {rate:.1f} tokens/s, first token after {(first or t0) - t0:.2f}s]\n")
        if harmony:
            msg = harmony_reply(reply)
            messages.append({k: v for k, v in msg.items() if k in ("role", "content", "thinking")})
        else:
            messages.append({"role": "assistant", "content": reply})


def _cli_context_hint(llm, context: int, first: str) -> str:
    """What to do about a prompt over the context, in the terminal's words (its flags, not Python's)."""
    model_max = getattr(llm.config, "max_position_embeddings", 0) or 0
    if context < model_max:
        return f"{first}, or raise --max-seq-len (now {context}; the model allows {model_max})"
    return first


def _cmd_chat(args: argparse.Namespace) -> int:
    r = _recipe(args)
    llm = _load(args.model, r)
    try:
        from acik.serve.policy import Policy

        chat_loop(llm, _sampling(r, llm), system=r.system, policy=Policy.load(r.policy) if r.policy else None)
    finally:
        llm.close()
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="continue a prompt with a model")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    p.add_argument("-v", "--verbose", action="store_true", help="print token counts and speed to stderr")
    _add_sampling_flags(p)
    p.set_defaults(func=_cmd_generate)

    p = subparsers.add_parser("chat", help="chat with a model in the terminal")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--policy", help="guardrails YAML, the same file `acik serve --policy` takes (docs/serve.md)")
    _add_sampling_flags(p)
    p.set_defaults(func=_cmd_chat)
