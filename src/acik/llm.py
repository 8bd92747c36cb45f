"""`LLM`: a loaded model directory: the Transformer, its config and its tokenizer."""

from __future__ import annotations

import json
import sys
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

    @classmethod
    def load(cls, path: str | Path, device: str | None = "cpu", dtype: str | torch.dtype | None = "auto",
             adapter: str | Path | None = None) -> LLM:
        """`adapter`: a LoRA adapter directory (PEFT format) applied unmerged on top of the base weights."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such model directory")
        config = hf.read_config(path)
        model = hf.build_model(config, path, device=device, dtype=dtype)
        if adapter is not None:
            from acik.train.lora import load_adapter

            load_adapter(model, adapter)
            model.eval()
        has_tokenizer = (path / "tokenizer.json").exists()
        return cls(model, config, path, path if has_tokenizer else None)

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

    def save(self, out_dir: str | Path, *, command: str | list[str] | None = None, recipe: dict | None = None,
             seed: int | None = None, parents: list[dict] | None = None, extra: dict | None = None,
             generation_config: dict | None = None) -> Path:
        """Write a Hugging Face directory that `transformers` loads, with its acik.json manifest."""
        out = hf.save_pretrained(self.model, self.config, out_dir, tokenizer_dir=self.tokenizer_dir,
                                 generation_config=generation_config)
        parents = list(parents or [])
        if self.path is not None and (self.path / "acik.json").exists() and self.path.resolve() != out.resolve():
            parent = json.loads((self.path / "acik.json").read_text())
            parents.append({"role": "source", "path": str(self.path), "directory_hash": parent["directory_hash"]})
        extra = dict(extra or {})
        if (out / "tokenizer.json").exists():
            from acik.manifest import tokenizer_identity

            extra.setdefault("tokenizer_identity", tokenizer_identity(out))
        write_manifest(out, kind="model", command=command or sys.argv, recipe=recipe, seed=seed,
                       parents=parents, extra=extra)
        return out

    def __repr__(self) -> str:
        n = self.model.num_parameters()
        return f"LLM({self.config.model_type}, {n / 1e6:.1f}M params, {self.device}, path={self.path})"
