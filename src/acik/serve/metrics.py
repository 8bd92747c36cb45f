"""Prometheus text-format metrics, written by hand: a few counters, gauges and histograms."""

from __future__ import annotations

import threading
from collections.abc import Callable

# Seconds; chosen to separate a tiny CPU model (milliseconds) from a large one on a GPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.total += 1
        self.sum += value


class Metrics:
    """Thread-safe: the engine's pump threads and the event loop both record here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish: dict[str, int] = {}
        self.ttft = Histogram()
        self.tpot = Histogram()
        self.e2e = Histogram()

    def request(self, endpoint: str, status: int | str) -> None:
        with self._lock:
            key = (endpoint, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1

    def finished(self, prompt_tokens: int, completion_tokens: int, finish_reason: str | None,
                 ttft: float | None, e2e: float) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            reason = finish_reason or "none"
            self.finish[reason] = self.finish.get(reason, 0) + 1
            if ttft is not None:
                self.ttft.observe(ttft)
                if completion_tokens > 1:
                    self.tpot.observe((e2e - ttft) / (completion_tokens - 1))
            self.e2e.observe(e2e)

    def render(self, gauges: Callable[[], dict[str, float]]) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        def hist(name: str, h: Histogram, help_: str) -> None:
            metric(name, "histogram", help_)
            for b, c in zip(h.buckets, h.counts):
                out.append(f'{name}_bucket{{le="{b}"}} {c}')
            out.append(f'{name}_bucket{{le="+Inf"}} {h.total}')
            out.append(f"{name}_sum {h.sum:.6f}")
            out.append(f"{name}_count {h.total}")

        with self._lock:
            metric("acik_requests_total", "counter", "HTTP API requests by endpoint and status code.")
            for (endpoint, status), n in sorted(self.requests.items()):
                out.append(f'acik_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            metric("acik_prompt_tokens_total", "counter", "Prompt tokens processed.")
            out.append(f"acik_prompt_tokens_total {self.prompt_tokens}")
            metric("acik_generation_tokens_total", "counter", "Tokens generated.")
            out.append(f"acik_generation_tokens_total {self.completion_tokens}")
            metric("acik_request_finish_total", "counter", "Finished generations by finish reason.")
            for reason, n in sorted(self.finish.items()):
                out.append(f'acik_request_finish_total{{reason="{reason}"}} {n}')
            hist("acik_time_to_first_token_seconds", self.ttft, "Time from request to first generated token.")
            hist("acik_time_per_output_token_seconds", self.tpot, "Mean time between generated tokens per request.")
            hist("acik_request_duration_seconds", self.e2e, "Time from request to last token.")
        for name, value in gauges().items():
            metric(name, "gauge", name.replace("_", " "))
            out.append(f"{name} {value}")
        return "\n".join(out) + "\n"
