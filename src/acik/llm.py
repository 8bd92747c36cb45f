"""`LLM`: a loaded model: the Transformer, its config, its tokenizer and its sampling defaults. `acik.load`
(acik.loader) builds one from a model reference."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from acik.config import ModelConfig
from acik.manifest import write_manifest

# acik's sampling defaults for chat where a model ships none: SmolLM2-135M-Instruct's authors suggest these, and at
# temperature 0.8 with top-p 1 it answered a plain question in broken French five times of six.
CHAT_DEFAULTS = {"temperature": 0.2, "top_p": 0.9}


class LLM:
    def __init__(self, model: torch.nn.Module, config: ModelConfig, path: Path | None = None,
                 tokenizer_dir: Path | None = None, generation_defaults: dict | None = None):
        self.model = model
        self.config = config
        self.path = path
        # A tokenizer directory, or the .gguf file that holds the tokenizer with the weights.
        self.tokenizer_dir = tokenizer_dir
        # Sampling defaults the model ships (generation_config.json, a GGUF's general.sampling.*); see generate().
        self.generation_defaults = dict(generation_defaults or {})
        self._tokenizer = None
        self._engine = None

    def optimize(self) -> dict[str, int]:
        """Rewrite the model in place for inference: fuse q/k/v and gate/up projections and, on CPU, prepack
        weights for oneDNN (see `acik.model.inference`). Afterwards the model can no longer be trained, saved
        or given LoRA adapters."""
        from acik.model.inference import optimize

        if self._engine is not None:
            raise RuntimeError("optimize() must run before this LLM's engine is created")
        return optimize(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.tokenizer_dir is None:
                raise ValueError(f"{self.path}: this model directory has no tokenizer.json; "
                                 "pass token ids, or copy the tokenizer files next to config.json")
            from acik.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_dir)
        return self._tokenizer

    def sampling_defaults(self, chat: bool = False) -> dict:
        """What a request gets for each sampling option it leaves unset: the model's own defaults
        (generation_config.json, or a GGUF's general.sampling.*), else for chat `CHAT_DEFAULTS`; plain
        `generate` falls back to `acik.engine.Request`'s defaults (temperature 1, top-p 1)."""
        return {**(CHAT_DEFAULTS if chat else {}), **self.generation_defaults}

    def generate(self, prompt, *, stream: bool = False, **sampling):
        """Continue `prompt` (text, token ids, or a list of either for a batch).

        Text in, text out; ids in, new ids out; a list in, a list out; `stream=True` yields text pieces
        (or ids). `sampling`: the fields of `acik.engine.Request` (max_new_tokens, temperature, top_p,
        top_k, min_p, repetition/frequency/presence_penalty, seed, stop, stop_token_ids, ignore_eos, ...).
        Requests run on this LLM's `acik.engine.Engine` (see `engine()`).
        """
        from acik.engine.generate import generate

        return generate(self, prompt, stream=stream, **sampling)

    def chat(self, messages: list[dict], *, stream: bool = False, **sampling):
        """Reply to a conversation (OpenAI-style messages) with the tokenizer's chat template; returns the
        reply's text (gpt-oss: the final channel), or yields its pieces with `stream=True`. A conversation
        longer than the context is a ValueError; `truncation="auto"` drops its oldest turns instead (the
        system prompt stays), as `acik chat` and the server's `"truncation": "auto"` do."""
        from acik.engine.generate import chat

        return chat(self, messages, stream=stream, **sampling)

    def engine(self, **options):
        """This LLM's shared inference engine; `options` (max_batch_size, max_seq_len, prefill_chunk)
        apply when it is first created."""
        from acik.engine.generate import get_engine

        return get_engine(self, **options)

    def save(self, out_dir: str | Path, *, command: str | list[str] | None = None, recipe: dict | None = None,
             seed: int | None = None, parents: list[dict] | None = None, extra: dict | None = None,
             generation_config: dict | None = None) -> Path:
        """Write a Hugging Face directory that `transformers` loads, with its acik.json manifest."""
        from acik.formats.hf import save_pretrained
        from acik.model.inference import refuse_if_optimized
        from acik.quant import is_quantized

        refuse_if_optimized(self.model, "save it")
        from acik.train.lora import lora_layers

        if lora_layers(self.model):
            raise ValueError("this model carries an unmerged LoRA adapter, which a model directory cannot hold; merge "
                             "it first (`acik lora merge BASE ADAPTER OUT`, or acik.train.lora.merge_lora(llm.model)), "
                             "or save the adapter alone (acik.train.lora.save_adapter)")
        save = save_pretrained
        if is_quantized(self.model):
            from acik.formats.compressed import save_quantized as save
        out = save(self.model, self.config, out_dir, tokenizer_dir=self.tokenizer_dir,
                   generation_config=generation_config)
        parents = list(parents or [])
        if self.path is not None and (self.path / "acik.json").exists() and self.path.resolve() != out.resolve():
            parent = json.loads((self.path / "acik.json").read_text())
            parents.append({"role": "source", "path": str(self.path), "directory_hash": parent["directory_hash"]})
        extra = dict(extra or {})
        if is_quantized(self.model):
            extra.setdefault("quantization", self.model.quantization)
        if (out / "tokenizer.json").exists():
            from acik.manifest import tokenizer_identity

            extra.setdefault("tokenizer_identity", tokenizer_identity(out))
        write_manifest(out, kind="model", command=command, recipe=recipe, seed=seed,
                       parents=parents, extra=extra)
        return out

    def __repr__(self) -> str:
        from acik import fmt

        n = self.model.num_parameters()
        return f"LLM({self.config.model_type}, {fmt.params(n)} params, {self.device}, path={self.path})"

    def close(self) -> None:
        """Stop this LLM's engine: its thread ends (requests still running finish as "cancelled") and its KV cache
        is freed. Idempotent. The model stays loaded; a later `generate`/`chat` starts a new engine. Scripts need
        not call it (engines are closed at exit), but `with acik.load(...) as llm:` frees the engine early."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
