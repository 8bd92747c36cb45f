"""`LLM`: a loaded model directory: the Transformer, its config and its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from acik import hf
from acik.config import ModelConfig
from acik.manifest import write_manifest


class LLM:
    def __init__(self, model: torch.nn.Module, config: ModelConfig, path: Path | None = None,
                 tokenizer_dir: Path | None = None):
        self.model = model
        self.config = config
        self.path = path
        self.tokenizer_dir = tokenizer_dir
        self._tokenizer = None
        self._engine = None

    @classmethod
    def load(cls, path: str | Path, device: str | None = "cpu", dtype: str | torch.dtype | None = "auto", *,
             active_experts: int | None = None, mxfp4: str = "dequantize", quantize: str | None = None,
             group_size: int | None = None, skip: list[str] | None = None, head: str | None = None,
             adapter: str | Path | None = None, optimize: bool = False) -> LLM:
        """`active_experts`: experts each token is routed to (MoE top-k), overriding config.json, so
        one checkpoint serves heavy and light use. `mxfp4`: "dequantize" (expand MXFP4 experts to
        `dtype` at load) or "packed" (keep 4.25-bit experts in memory, dequantise routed experts per
        forward; a dense MoE checkpoint is quantised at load). `quantize`: an `acik.quant` method
        (int8, int4, int4-hqq, nf4, mxfp4, w8a8) applied at load with `group_size`, `skip` (default
        `acik.quant.default_skip(method)`: int8 quantizes the output head, the others keep it) and `head`
        ("int8": the head at 8 bits whatever the method); a
        directory written by `acik quantize` loads quantized by itself. `adapter`: a LoRA adapter
        directory (PEFT format) applied unmerged on top of the (possibly quantized) base. `optimize`:
        rewrite the model for inference only, faster but no longer trainable or savable (see `optimize`)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such model directory")
        config = hf.read_config(path)
        if mxfp4 not in ("dequantize", "packed"):
            raise ValueError(f"mxfp4={mxfp4!r}: use 'dequantize' or 'packed'")
        if config.num_experts:
            config.expert_quant = "mxfp4" if mxfp4 == "packed" else None
        if active_experts is not None:
            if not config.num_experts:
                raise ValueError(f"{path}: active_experts={active_experts} but this model has no experts")
            if not 0 < active_experts <= config.num_experts:
                raise ValueError(f"active_experts={active_experts}: must be in 1..{config.num_experts} "
                                 "(the experts per MoE layer)")
            config.num_experts_per_tok = active_experts
        from acik.quant import formats

        stored = formats.read_quantization(path)
        if stored and quantize:
            raise formats.QuantizationError(f"{path} is already quantized ({stored.get('quant_method')}); load it "
                                            "without quantize=, or quantize its unquantized parent")
        if formats.is_acik_quantized(stored):
            model = formats.load_quantized(path, config, device=device, dtype=dtype)
        else:
            model = hf.build_model(config, path, device=device, dtype=dtype)
            if quantize:
                from acik.quant import quantize_model

                quantize_model(model, quantize, group_size, skip, head)
        if adapter is not None:
            from acik.train.lora import load_adapter

            load_adapter(model, adapter)
            model.eval()
        has_tokenizer = (path / "tokenizer.json").exists()
        llm = cls(model, config, path, path if has_tokenizer else None)
        if optimize:
            llm.optimize()
        return llm

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
        reply's text (gpt-oss: the final channel), or yields its pieces with `stream=True`."""
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
        from acik.model.inference import refuse_if_optimized
        from acik.quant import is_quantized

        refuse_if_optimized(self.model, "save it")
        save = hf.save_pretrained
        if is_quantized(self.model):
            from acik.quant.formats import save_quantized as save
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
        n = self.model.num_parameters()
        return f"LLM({self.config.model_type}, {n / 1e6:.1f}M params, {self.device}, path={self.path})"
