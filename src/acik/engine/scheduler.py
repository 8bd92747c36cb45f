"""Continuous batching: one background thread runs the model for every request at once.

Each step: admit waiting requests into free cache slots, run one prefill chunk of the request being
prefilled (if any), then one decode step for every request that is generating, and stream each
request's new token to its handle. Finished and cancelled requests leave between steps.

Slots are kept contiguous so the cache is read as a view: rows [0, d) are decoding and row d (when
present) is being prefilled. When a row leaves, the last decoding row moves into its place.

The thread is a daemon, and every engine still running is closed (stopped and joined) at interpreter exit,
before Python finalizes: a daemon thread caught inside a PyTorch call then would be torn down while PyTorch's
C++ code waits to retake the GIL, and the process aborts ("terminate called without an active exception",
exit code 134), as scripts that ended right after `llm.generate` did about one run in three.
"""

from __future__ import annotations

import atexit
import dataclasses
import queue
import threading
import weakref
from dataclasses import dataclass, field

import torch

from acik.engine.cache import KVCache
from acik.engine.openmp import release_openmp_threads
from acik.engine.sampling import apply_penalties, check_sampling, sample, top_logprobs

FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass
class Request:
    """What to generate. Sampling follows the OpenAI / vLLM meanings of these names.

    The model's own end tokens (eos, the tokenizer's turn-end tokens) always stop generation unless
    `ignore_eos`; `stop_token_ids` and `stop` (strings) add more. `max_new_tokens=None` generates until
    the context is full; 0 with `prompt_logprobs=True` only scores the prompt.
    """

    prompt_ids: list[int]
    max_new_tokens: int | None = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False
    skip_special_tokens: bool = True
    truncate: bool = False  # keep the end of a prompt that does not fit, instead of an error


@dataclass
class Event:
    """One generated token (or the end of a request).

    `text` is the new text it completes (may be ""; never part of a stop string); `logprob` and
    `top_logprobs` are from the model's raw distribution (before penalties and temperature), given when
    the request asked for them. The last event of a request has `finish_reason` set.
    """

    token_id: int | None
    text: str = ""
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None


class Handle:
    """The stream of one request's events. Iterate it; `cancel()` stops it at the next step."""

    def __init__(self, request: Request, engine: Engine):
        self.request = request
        self._engine = engine
        self._events: queue.Queue = queue.Queue()
        self.cancelled = False
        self.finished = False
        self.finish_reason: str | None = None
        self.prompt_tokens = len(request.prompt_ids)
        self.completion_tokens = 0
        self.prompt_logprobs: list[float | None] | None = None
        # With prompt_logprobs and top_logprobs=n: each prompt position's n likeliest tokens (None for the first)
        self.prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
        self.token_ids: list[int] = []
        self._drained = False

    def cancel(self) -> None:
        self.cancelled = True
        self._engine._wake.set()

    def __iter__(self):
        while not self._drained:
            ev = self._events.get()
            if isinstance(ev, BaseException):
                self._drained = True
                raise RuntimeError(f"the engine failed: {ev}") from ev
            if ev.finish_reason is not None:
                self._drained = True  # a second loop over a finished handle ends at once
            yield ev

    def text(self) -> str:
        """Consume the stream; return the whole generated text."""
        return "".join(ev.text for ev in self)


class _Sequence:
    """A request's state inside the engine."""

    def __init__(self, handle: Handle, engine: Engine):
        req = handle.request
        self.handle, self.req = handle, req
        self.ids = list(req.prompt_ids)
        self.prefilled = 0  # prompt tokens already in the cache
        self.new_tokens = 0
        self.gen = torch.Generator().manual_seed(req.seed if req.seed is not None else
                                                 int(torch.randint(0, 2**62, (1,))))
        self.stop_ids = set(req.stop_token_ids) | (set() if req.ignore_eos else engine.eos_ids)
        self.decoder = engine.tokenizer.stream_decoder(req.skip_special_tokens) if engine.tokenizer else None
        self.pending = ""  # text held back because it might begin a stop string
        self.counts = None  # generated-token counts (frequency/presence penalties)
        self.seen = None  # prompt + output ids (repetition penalty)
        if req.frequency_penalty or req.presence_penalty:
            self.counts = torch.zeros(engine.vocab_size)
        if req.repetition_penalty != 1.0:
            self.seen = torch.zeros(engine.vocab_size, dtype=torch.bool)
            self.seen[torch.tensor(req.prompt_ids)] = True
        self.max_len = engine.max_seq_len
        self.prompt_logprobs: list[float | None] = [None]
        self.prompt_top_logprobs: list[list[tuple[int, float]] | None] = [None]


_RUNNING: weakref.WeakSet[Engine] = weakref.WeakSet()  # engines whose thread has started and not been closed


@atexit.register
def _close_running_engines() -> None:
    """Stop every engine's thread between two steps and wait for it (atexit runs before finalization)."""
    for engine in list(_RUNNING):
        engine.close()


class Engine:
    """Runs `llm`'s model for many requests at once. Thread-safe `submit`; a background thread is
    started by the first request.

    `max_batch_size`: concurrent sequences (cache slots); `max_seq_len`: context per sequence (default:
    the model's, at most 4096, to keep the preallocated cache modest); `prefill_chunk`: prompt tokens
    per forward pass while prefilling; `compile`: run decode steps through `torch.compile` (two graphs,
    batch 1 and larger batches, compiled at their first use; sequence growth does not recompile).
    """

    def __init__(self, llm, max_batch_size: int = 8, max_seq_len: int | None = None, prefill_chunk: int = 512,
                 compile: bool = False):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
        self.llm, self.model, self.config = llm, llm.model, llm.config
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len or min(self.config.max_position_embeddings, 4096)
        self.prefill_chunk = min(prefill_chunk, self.max_seq_len)
        self.vocab_size = self.config.vocab_size
        try:
            self.tokenizer = llm.tokenizer
        except (ValueError, OSError):
            self.tokenizer = None
        eos = self.config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer is not None:
            self.eos_ids |= set(self.tokenizer.stop_token_ids)
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, getattr(self.model, "compute_dtype", param.dtype)
        self.cache = KVCache(self.config, max_batch_size, self.max_seq_len, self.prefill_chunk,
                             dtype=self.dtype, device=self.device, whole_ring=compile)
        self._decode_fn = self._forward
        if compile:  # dynamic: batch size and key count are symbolic (see KVCache.select)
            self._decode_fn = torch.compile(self._forward, dynamic=True)
        self._waiting: queue.Queue[_Sequence] = queue.Queue()
        self._rows: list[_Sequence] = []  # rows[:decoding] decode; rows[decoding] (if any) prefills
        self._decoding = 0
        self._steps = 0
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._error: BaseException | None = None

    # -- public API -------------------------------------------------------------------------------
    def submit(self, request: Request) -> Handle:
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        request = dataclasses.replace(request, prompt_ids=list(request.prompt_ids), stop=stop,
                                      stop_token_ids=list(request.stop_token_ids or []))
        self._validate(request)
        handle = Handle(request, self)
        if self._closed:
            raise RuntimeError("the engine is closed")
        if self._error is not None:
            raise RuntimeError(f"the engine failed earlier: {self._error}")
        if threading.current_thread() is not self._thread:
            release_openmp_threads()  # this thread's idle OpenMP pool would slow the engine's (see acik.engine.openmp)
        self._waiting.put(_Sequence(handle, self))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="acik-engine", daemon=True)
                self._thread.start()
                _RUNNING.add(self)
        self._wake.set()
        return handle

    def stats(self) -> dict:
        active = len(self._rows)
        return dict(active=active, queued=self._waiting.qsize(), free_slots=self.max_batch_size - active,
                    steps=self._steps)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the engine: requests still running or queued finish as "cancelled", and the thread ends after
        its current step. Idempotent; from the engine's own thread it stops without waiting for itself."""
        self._closed = True
        self._wake.set()
        _RUNNING.discard(self)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- validation ---------------------------------------------------------------------------------
    def _validate(self, r: Request) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(len(r.prompt_ids) > 0, "the prompt is empty: give at least one token")
        need(all(isinstance(t, int) and 0 <= t < self.vocab_size for t in r.prompt_ids),
             f"prompt token ids must be integers in [0, {self.vocab_size})")
        check_sampling(vars(r))
        need(all(isinstance(t, int) for t in r.stop_token_ids), "stop_token_ids must be integers")
        room = self.max_seq_len - (1 if r.max_new_tokens != 0 else 0)
        if len(r.prompt_ids) > room:
            if not r.truncate:
                raise ValueError(f"the prompt has {len(r.prompt_ids)} tokens but the context holds "
                                 f"{self.max_seq_len} (engine max_seq_len); shorten it, raise max_seq_len, or "
                                 f"pass truncate=True to keep its last tokens")
            keep = room - min(r.max_new_tokens or 0, room // 2)
            r.prompt_ids = list(r.prompt_ids[-keep:])

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        try:
            with torch.inference_mode():
                while not self._closed:
                    # Clear before looking for work, so a submit that comes after the look wakes us.
                    self._wake.clear()
                    self._retire_cancelled()
                    self._admit()
                    if not self._rows:
                        release_openmp_threads()  # idle: leave the cores' OpenMP to other threads' work
                        self._wake.wait()
                        continue
                    self._step()
        except BaseException as e:  # report to every waiting client rather than hang them
            self._error = e
            for seq in self._rows:
                seq.handle._events.put(e)
            while not self._waiting.empty():
                self._waiting.get().handle._events.put(e)
            raise
        for seq in list(self._rows):
            self._finish(seq, "cancelled")
        while not self._waiting.empty():
            self._finish(self._waiting.get(), "cancelled", row=False)

    def _admit(self) -> None:
        # One request is prefilled at a time (in chunks, between decode steps).
        while len(self._rows) == self._decoding and len(self._rows) < self.max_batch_size:
            try:
                seq = self._waiting.get_nowait()
            except queue.Empty:
                return
            if seq.handle.cancelled:
                self._finish(seq, "cancelled", row=False)
                continue
            self.cache.reset(len(self._rows))
            self._rows.append(seq)

    def _retire_cancelled(self) -> None:
        for seq in [s for s in self._rows if s.handle.cancelled]:
            self._finish(seq, "cancelled")

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, last_only: bool) -> torch.Tensor:
        return self.model(ids, positions=positions, cache=self.cache, last_only=last_only)

    def _step(self) -> None:
        self._steps += 1
        d = self._decoding
        if len(self._rows) > d:
            self._prefill_chunk(d, self._rows[d])
        if self._decoding and d:
            rows = self._rows[:d]
            ids = torch.tensor([[s.ids[-1]] for s in rows], device=self.device)
            positions = torch.tensor([[len(s.ids) - 1] for s in rows], device=self.device)
            self.cache.select(0, d, positions)
            # Sampling runs on the host (each request's torch.Generator and penalty counts are CPU
            # tensors): one copy of the batch's last-position logits per step.
            logits = self._decode_fn(ids, positions, True)[:, -1].float().cpu()
            for seq, row_logits in zip(list(rows), logits):
                self._emit(seq, row_logits)

    def _prefill_chunk(self, row: int, seq: _Sequence) -> None:
        n_prompt = len(seq.req.prompt_ids)
        start, stop = seq.prefilled, min(seq.prefilled + self.prefill_chunk, n_prompt)
        ids = torch.tensor([seq.ids[start:stop]], device=self.device)
        positions = torch.arange(start, stop, device=self.device)[None]
        self.cache.select(row, row + 1, positions)
        want_all = seq.req.prompt_logprobs
        logits = self.model(ids, positions=positions, cache=self.cache, last_only=not want_all)[0].float()
        seq.prefilled = stop
        if want_all:
            lp = torch.log_softmax(logits, dim=-1)
            targets = seq.ids[start + 1:stop + 1] if stop < n_prompt else seq.ids[start + 1:stop]
            seq.prompt_logprobs += lp[torch.arange(len(targets)), torch.tensor(targets)].tolist()
            if seq.req.top_logprobs:
                seq.prompt_top_logprobs += [top_logprobs(row, seq.req.top_logprobs) for row in lp[:len(targets)]]
        if stop < n_prompt:
            return
        # The prompt is in the cache: this row now decodes.
        seq.handle.prompt_logprobs = seq.prompt_logprobs if want_all else None
        if want_all and seq.req.top_logprobs:
            seq.handle.prompt_top_logprobs = seq.prompt_top_logprobs
        self._decoding += 1
        if seq.req.max_new_tokens == 0:
            self._finish(seq, "length")
            return
        self._emit(seq, logits[-1].cpu())

    def _emit(self, seq: _Sequence, logits: torch.Tensor) -> None:
        """Sample the next token of `seq` from its fp32 logits and stream it."""
        req = seq.req
        raw = logits
        if seq.counts is not None or seq.seen is not None:
            logits = apply_penalties(logits.clone(), seq.counts, seq.seen, req.repetition_penalty,
                                     req.frequency_penalty, req.presence_penalty)
        token = sample(logits, req.temperature, req.top_k, req.top_p, req.min_p, seq.gen)
        ev = Event(token)
        if req.logprobs or req.top_logprobs:
            lp = torch.log_softmax(raw, dim=-1)
            ev.logprob = float(lp[token])
            ev.top_logprobs = top_logprobs(lp, req.top_logprobs)
        seq.ids.append(token)
        seq.new_tokens += 1
        seq.handle.completion_tokens = seq.new_tokens
        seq.handle.token_ids.append(token)
        if seq.counts is not None:
            seq.counts[token] += 1
        if seq.seen is not None:
            seq.seen[token] = True
        finish = None
        if token in seq.stop_ids:
            finish = "stop"
            ev.text = seq.pending + (seq.decoder.flush() if seq.decoder else "")
            seq.pending = ""
        else:
            text = seq.decoder.add(token) if seq.decoder else ""
            ev.text, stopped = self._stop_text(seq, text)
            if stopped:
                finish = "stop"
            elif (req.max_new_tokens is not None and seq.new_tokens >= req.max_new_tokens) \
                    or len(seq.ids) >= seq.max_len:
                finish = "length"
                ev.text += seq.pending + (seq.decoder.flush() if seq.decoder else "")
                seq.pending = ""
        ev.finish_reason = finish
        seq.handle._events.put(ev)
        if finish:
            self._finish(seq, finish, event=False)

    @staticmethod
    def _stop_text(seq: _Sequence, piece: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string ended the request. Text that might be the
        start of a stop string is held back until the next piece decides."""
        stops = seq.req.stop
        text = seq.pending + piece
        if not stops:
            return text, False
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if hits:
            seq.pending = ""
            return text[:min(hits)], True
        hold = 0
        for s in stops:
            for n in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:n]):
                    hold = n
                    break
        seq.pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def _finish(self, seq: _Sequence, reason: str, event: bool = True, row: bool = True) -> None:
        h = seq.handle
        if event:
            h._events.put(Event(None, "", finish_reason=reason))
        h.finished, h.finish_reason = True, reason
        if not row:
            return
        # Keep rows contiguous: decoding rows first, then the prefilling row.
        i = self._rows.index(seq)
        decoding = i < self._decoding
        if decoding:
            last = self._decoding - 1
            if i != last:
                self._move(last, i)
            self._decoding -= 1
            i = last
            if len(self._rows) > self._decoding + 1:  # a prefilling row sat behind the decoders
                self._move(self._decoding + 1, i)
                i = self._decoding + 1
        self._rows.pop(i)

    def _move(self, src: int, dst: int) -> None:
        self.cache.move(src, dst)
        self._rows[dst] = self._rows[src]
