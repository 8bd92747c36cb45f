"""`acik quickstart`: the longest end-to-end path acik has, run on a fresh machine with no download."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def run(out: Path, seed: int = 0) -> Path:
    import acik
    from acik.config import preset
    from acik.hf import describe
    from acik.llm import LLM
    from acik.manifest import verify
    from acik.model import Transformer
    from acik.tokenizer import save_byte_tokenizer

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] building a tiny Llama-architecture model (seed {seed})")
    config = preset("tiny")
    model = Transformer(config)
    model.init_weights(seed=seed)
    llm = LLM(model, config, tokenizer_dir=save_byte_tokenizer(out / "tokenizer"))
    print(f"[2/4] saving it as a Hugging Face directory: {out / 'model'}")
    llm.save(out / "model", recipe={"preset": "tiny"}, seed=seed)
    print("[3/4] loading it back and checking its manifest")
    again = acik.load(out / "model", dtype="float32")
    ids = torch.arange(16)[None]
    with torch.no_grad():
        if not torch.equal(again.model(ids), llm.model(ids)):
            raise RuntimeError("reloaded model gives different logits")
    problems = verify(out / "model")
    if problems:
        raise RuntimeError(f"manifest check failed: {problems}")
    print("[4/4] acik info:\n")
    print(describe(out / "model"))
    print(f"\ndone in {time.time() - t0:.1f}s: {out / 'model'} (verify it with `acik verify {out / 'model'}`)")
    return out / "model"


def add_cli(sub) -> None:
    p = sub.add_parser("quickstart", help="run the end-to-end demo on this machine")
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda args: run(Path(args.out), args.seed) and 0)
