"""Shared by the serve tests: a tiny random model with acik's byte tokenizer, and a server running
in-process on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn

from acik.config import preset
from acik.llm import LLM
from acik.model import Transformer
from acik.tokenizer import save_byte_tokenizer


def make_tiny_model(root: Path) -> Path:
    tok_dir = save_byte_tokenizer(root / "tok")
    cfg = preset("tiny")
    model = Transformer(cfg)
    model.init_weights(0)
    return LLM(model, cfg, tokenizer_dir=tok_dir).save(root / "tiny-chat", command="test")


class LiveServer:
    """uvicorn in a thread, bound to 127.0.0.1 on a port the OS picked."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the test server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


class ScriptedEngine:
    """Follows acik.engine.Engine's contract but replies with fixed text, one character (or one given
    piece) per token: for tests of the page and of the policy, where the reply's content must be known."""

    def __init__(self, reply: str | list[str], delay: float = 0.0):
        self.reply = reply
        self.delay = delay
        self.max_seq_len = 512
        self.requests = []
        self.closed = False

    def submit(self, request):
        self.requests.append(request)
        return _ScriptedHandle(self, request)

    def stats(self) -> dict:
        return dict(active=0, queued=0, free_slots=1, steps=0)

    def close(self) -> None:
        self.closed = True


class _ScriptedHandle:
    def __init__(self, engine: ScriptedEngine, request):
        from acik.engine import Event

        self._event = Event
        self.engine = engine
        self.request = request
        self.prompt_tokens = len(request.prompt_ids)
        self.completion_tokens = 0
        self.prompt_logprobs = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self):
        limit = self.request.max_new_tokens
        pieces = list(self.engine.reply) if isinstance(self.engine.reply, str) else self.engine.reply
        text = pieces if limit is None else pieces[:limit]
        for i, ch in enumerate(text):
            if self.cancelled:
                yield self._event(None, "", finish_reason="cancelled")
                return
            time.sleep(self.engine.delay)
            self.completion_tokens += 1
            last = i == len(text) - 1
            reason = ("stop" if len(text) == len(pieces) else "length") if last else None
            yield self._event(ord(ch[0]) % 256, ch, finish_reason=reason)


def torch_threads() -> None:
    torch.set_num_threads(2)
