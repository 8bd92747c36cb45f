"""`acik serve`: a private, OpenAI-compatible API and a web chat page for one local model.

```python
from acik.serve import ServeSettings, build_app
app = build_app(ServeSettings(model="path/to/model"))   # a FastAPI app; run it with uvicorn
```
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Policy", "ServeSettings", "ServerConfig", "build_app", "create_app", "filter_stream", "add_cli"]


def __getattr__(name: str) -> Any:
    # FastAPI loads only when serving, so every other `acik` command starts fast.
    if name in ("ServerConfig", "create_app"):
        from acik.serve import app

        return getattr(app, name)
    if name in ("Policy", "filter_stream"):
        from acik.serve import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'acik.serve' has no attribute {name!r}")


@dataclass
class ServeSettings:
    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure_no_auth: bool = False
    model_name: str | None = None  # the id clients send as "model"; default: the directory's name
    max_concurrency: int = 64
    max_batch_size: int = 8
    max_seq_len: int | None = None
    prefill_chunk: int = 512
    device: str = "cpu"
    dtype: str = "auto"
    optimize: bool = True  # fused projections and prepacked CPU weights (acik.model.inference)
    policy: str | None = None
    cors_origins: list[str] = field(default_factory=list)


class ServeError(ValueError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: ServeSettings) -> None:
    """Refuse to serve beyond this machine without a key, unless the user says so in as many words."""
    if not is_loopback(settings.host) and not settings.api_key and not settings.insecure_no_auth:
        raise ServeError(f"--host {settings.host} makes the server reachable from other machines; set an API key "
                         "(--api-key KEY or ACIK_API_KEY) or pass --insecure-no-auth if you really mean it")


def check_settings(settings: ServeSettings) -> None:
    """Reject impossible numbers before the model loads (the engine would, minutes later)."""
    if not 0 <= settings.port <= 65535:
        raise ServeError(f"--port must be in 0..65535, got {settings.port}")
    for flag, value in (("--max-concurrency", settings.max_concurrency), ("--max-batch-size", settings.max_batch_size),
                        ("prefill_chunk", settings.prefill_chunk), ("--max-seq-len", settings.max_seq_len)):
        if value is not None and value < 1:
            raise ServeError(f"{flag} must be at least 1, got {value}")


def check_port(host: str, port: int) -> None:
    """Fail now, naming the port, if the server could not listen there: before the banner and the minutes
    a model takes to load. The probe binds as uvicorn does (SO_REUSEADDR, so a port left in TIME_WAIT by a
    previous run is free), then lets go; a program that takes the port in between still fails in uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use (another `acik serve`, or another "
                                 f"program); stop it, or choose another port with --port, e.g. --port {port + 1}"
                                 ) from None
            if e.errno == errno.EACCES:
                raise ServeError(f"port {port} needs administrator rights on this system; choose a port above "
                                 "1023 with --port") from None
            raise ServeError(f"cannot listen on {host} port {port}: {e.strerror or e}; check --host and --port"
                             ) from None


def build_app(settings: ServeSettings, llm: Any = None) -> Any:
    """Load the model (unless `llm` is given), start its engine and return the FastAPI app."""
    from acik.engine import Engine
    from acik.engine.generate import sampling_defaults
    from acik.loader import load
    from acik.serve.app import ServerConfig, create_app
    from acik.serve.policy import Policy

    if not settings.model and llm is None:
        raise ServeError("give a model directory: acik serve DIR")
    if llm is None:
        llm = load(settings.model, device=settings.device, dtype=settings.dtype,
                        optimize=settings.optimize)
    tokenizer = llm.tokenizer  # fails early, with the fix in the message, if the directory has none
    policy = Policy.load(settings.policy) if settings.policy else Policy()
    engine = Engine(llm, max_batch_size=settings.max_batch_size, max_seq_len=settings.max_seq_len,
                    prefill_chunk=settings.prefill_chunk)
    name = settings.model_name or (Path(llm.path).name if getattr(llm, "path", None) else "acik")
    config = ServerConfig(model_name=name, max_context=engine.max_seq_len, vocab_size=llm.config.vocab_size,
                          api_key=settings.api_key, max_concurrency=settings.max_concurrency,
                          cors_origins=list(settings.cors_origins), policy=policy,
                          chat_defaults=sampling_defaults(llm, chat=True),
                          completion_defaults=sampling_defaults(llm, chat=False))
    return create_app(engine, tokenizer, config)


def _cmd_serve(args: Any) -> int:
    import uvicorn

    from acik.recipe import load_recipe

    settings = load_recipe(ServeSettings, args.recipe, args.set, model=args.model, host=args.host, port=args.port,
                           api_key=args.api_key or os.environ.get("ACIK_API_KEY") or None,
                           insecure_no_auth=args.insecure_no_auth or None, model_name=args.model_name,
                           max_concurrency=args.max_concurrency, max_batch_size=args.max_batch_size,
                           max_seq_len=args.max_seq_len, device=args.device, dtype=args.dtype, policy=args.policy,
                           optimize=False if args.no_optimize else None,
                           cors_origins=args.cors_origin)
    check_exposure(settings)
    check_settings(settings)
    check_port(settings.host, settings.port)
    # The engine thread makes many short torch calls, each releasing and retaking the GIL, while the
    # event loop formats and sends tokens. With Python's default 5 ms switch interval the engine can
    # wait that long for the GIL after every call; 1 ms keeps decode steps close to their in-process
    # speed under load (see docs/benchmarks.md, Serving).
    sys.setswitchinterval(0.001)
    app = build_app(settings)
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"acik serve: {app.state.acik.config.model_name} on http://{shown}:{settings.port}/ "
          f"(API at /v1, {'key required' if settings.api_key else 'no key'})", file=sys.stderr)
    # On Ctrl-C uvicorn stops accepting, lets in-flight requests finish for a while, then cancels them
    # (which cancels their generations); the app's shutdown closes the engine.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10,
                server_header=False)
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="serve a model: OpenAI-compatible API and a web chat page",
                              description="Serve a model directory on this machine: the OpenAI API at /v1 and a "
                              "chat page at /. Binds 127.0.0.1 unless told otherwise.")
    p.add_argument("model", nargs="?", default=None,
                   help="model directory, or a Hub repo id fetched earlier with `acik pull`")
    p.add_argument("--recipe", help="YAML file with these settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (also read from ACIK_API_KEY)")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --host without a key")
    p.add_argument("--model-name", help="the model id clients use (default: the directory's name)")
    p.add_argument("--max-concurrency", type=int, help="requests in flight before new ones get 429 (default 64)")
    p.add_argument("--max-batch-size", type=int, help="sequences decoded together (default 8)")
    p.add_argument("--max-seq-len", type=int, help="context length per sequence (default: the model's, <= 4096)")
    p.add_argument("--device", help="cpu, cuda, mps (default cpu)")
    p.add_argument("--dtype", help="auto, float32, bfloat16, float16")
    p.add_argument("--no-optimize", action="store_true",
                   help="keep the model as loaded: no fused projections or prepacked weights (slower on CPU)")
    p.add_argument("--policy", help="guardrails policy YAML (see docs/serve.md)")
    p.add_argument("--cors-origin", action="append", help="allow browser requests from this origin (repeatable)")
    p.set_defaults(func=_cmd_serve)
