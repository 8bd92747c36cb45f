"""`acik convert`: models between acik, llama.cpp/Ollama and Hugging Face.

  acik convert SRC --to gguf --type f16 --out model.gguf [--modelfile Modelfile]
      any model acik loads (HF directory, run directory, .gguf, built-in name) -> a GGUF file
      (`acik.formats.gguf_writer`), plus an Ollama Modelfile (template, stop tokens, sampling defaults)
  acik convert model.gguf --to hf --out DIR [--dtype float32]
      a GGUF file -> a Hugging Face directory transformers loads, its manifest recording the GGUF's sha256
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from acik import fmt
from acik.formats.gguf_writer import TYPES

# Ollama's names for acik's sampling options.
_OLLAMA_PARAMS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                  "repetition_penalty": "repeat_penalty"}

# Go templates (Ollama's TEMPLATE) for the chat formats acik recognises in a Jinja chat template.
_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""
_LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>

"""


def go_template(jinja: str | None) -> str | None:
    """The Ollama (Go) template for a ChatML or Llama 3 style Jinja chat template; None for other formats."""
    if not jinja:
        return None
    if "<|im_start|>" in jinja and "<|im_end|>" in jinja:
        return _CHATML
    if "<|start_header_id|>" in jinja and "<|eot_id|>" in jinja:
        return _LLAMA3
    return None


def default_system(tokenizer) -> str | None:
    """The system prompt the chat template inserts when a conversation has none (SmolLM2's 'You are a helpful AI
    assistant named SmolLM...'): Ollama's SYSTEM, which its Go template cannot invent by itself."""
    try:
        with_none = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}])
        marker = "\x01system marker\x01"
        with_ours = tokenizer.apply_chat_template([{"role": "system", "content": marker},
                                                   {"role": "user", "content": "\x00"}])
    except Exception:  # a template that needs more than plain messages: no default to report
        return None
    before, _, after = with_ours.partition(marker)
    between = after[:after.find("\x00")]  # from the end of the system text to the user's text
    if not between or not with_none.startswith(before):
        return None
    rest = with_none[len(before):]
    cut = rest.find(between)
    return rest[:cut] if cut > 0 else None


def modelfile(llm, gguf_path: str | Path, adapter: str | Path | None = None) -> str:
    """An Ollama Modelfile for `gguf_path` written from `llm`: FROM, TEMPLATE, SYSTEM, stop tokens, sampling; with
    `adapter` (a LoRA GGUF), `gguf_path` is the base model's GGUF and an ADAPTER line applies the adapter."""
    tok = llm.tokenizer
    lines = [f"# Ollama Modelfile written by acik convert; `ollama create NAME -f {Path('Modelfile')}`"]
    if adapter is not None and Path(gguf_path).suffix.lower() != ".gguf":
        lines.append(f"# the base model as GGUF first: acik convert {gguf_path} --to gguf --out base.gguf")
        gguf_path = "base.gguf"
    lines.append(f"FROM {Path(gguf_path).resolve()}")
    if adapter is not None:
        lines.append(f"ADAPTER {Path(adapter).resolve()}")
    template = go_template(tok.chat_template)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
        system = default_system(tok)
        if system:
            lines.append(f'SYSTEM """{system}"""')
    elif tok.chat_template:
        lines.append("# no TEMPLATE: acik converts ChatML and Llama 3 chat templates; Ollama falls back to the "
                     "GGUF's tokenizer.chat_template where it knows it, else write one by hand")
    for tid in tok.stop_token_ids:
        text = tok.id_to_token(tid)
        if text is not None:
            lines.append(f"PARAMETER stop {json.dumps(text)}")
    for ours, value in llm.sampling_defaults(chat=True).items():
        if ours in _OLLAMA_PARAMS and value is not None:
            lines.append(f"PARAMETER {_OLLAMA_PARAMS[ours]} {value:g}" if isinstance(value, float)
                         else f"PARAMETER {_OLLAMA_PARAMS[ours]} {value}")
    return "\n".join(lines) + "\n"


def to_gguf(src: str, out: str | Path, kind: str | None = None, modelfile_path: str | Path | None = None) -> dict:
    """Load `src` as float32 and write it as GGUF of type `kind` (default f16; a LoRA adapter: llama.cpp's adapter
    GGUF, default f32); returns the writer's summary plus the Modelfile."""
    from acik.formats.gguf_writer import GGUFWriteError, write_gguf
    from acik.loader import load
    from acik.models import resolve

    ref = resolve(src)  # an adapter whose base is missing fails here, naming the base
    if ref.kind == "adapter":
        return _adapter_to_gguf(ref, out, kind, modelfile_path)
    kind = kind or "f16"
    if kind not in TYPES:
        raise GGUFWriteError(f"--type {kind!r} is not a type acik writes; use one of {', '.join(TYPES)}")
    if Path(out).suffix.lower() != ".gguf":
        raise ValueError(f"--out {out}: name the file .gguf (llama.cpp and Ollama expect it)")
    llm = load(ref, dtype="float32", dequantize=True)
    summary = write_gguf(llm, out, kind)
    summary["modelfile"] = modelfile(llm, out)
    if modelfile_path is not None:
        Path(modelfile_path).write_text(summary["modelfile"], encoding="utf-8")
    return summary


def _adapter_to_gguf(ref, out: str | Path, kind: str | None, modelfile_path: str | Path | None) -> dict:
    """A LoRA adapter directory -> llama.cpp's adapter GGUF (f32 unless `kind`), on its base loaded as float32."""
    from acik.formats.gguf_lora import write_lora_gguf
    from acik.loader import load

    if Path(out).suffix.lower() != ".gguf":
        raise ValueError(f"--out {out}: name the file .gguf (llama.cpp and Ollama expect it)")
    llm = load(ref, dtype="float32", dequantize=True)
    summary = write_lora_gguf(llm, out, kind or "f32", adapter_dir=ref.path)
    summary["modelfile"] = modelfile(llm, ref.model.path, adapter=out)
    if modelfile_path is not None:
        Path(modelfile_path).write_text(summary["modelfile"], encoding="utf-8")
    return summary


def to_hf(src: str, out: str | Path, dtype: str | None = None) -> Path:
    """A GGUF file -> a Hugging Face directory (float32 unless `dtype`), recording the file's sha256 as parent."""
    from acik.loader import load
    from acik.manifest import sha256_file
    from acik.models import resolve

    ref = resolve(src)
    if ref.kind != "gguf":
        raise ValueError(f"{src} is not a GGUF file; --to hf converts .gguf files (acik loads Hugging Face "
                         "directories as they are)")
    llm = load(ref, dtype=dtype or "float32", dequantize=True)
    gen = {k: v for k, v in llm.generation_defaults.items()
           if k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
    if gen:
        gen["do_sample"] = gen.get("temperature", 1.0) > 0
    parents = [{"role": "source", "path": str(ref.path), "sha256": sha256_file(ref.path)}]
    return llm.save(out, command=sys.argv, parents=parents, generation_config=gen or None)


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.to == "hf":
        if args.type is not None or args.modelfile is not None:
            raise ValueError("--type and --modelfile apply to --to gguf only")
        out = to_hf(args.src, args.out, args.dtype)
        print(f"{out}: Hugging Face directory ({args.dtype or 'float32'})")
        return 0
    if args.dtype is not None:
        raise ValueError("--dtype applies to --to hf only; use --type for GGUF")
    summary = to_gguf(args.src, args.out, args.type, args.modelfile)
    if "rank" in summary:
        print(f"{summary['path']}: LoRA adapter GGUF for {summary['architecture']}, {summary['tensors']} tensors, "
              f"rank {summary['rank']}, alpha {summary['alpha']:g}", file=sys.stderr)
    else:
        types = ", ".join(f"{n} {k}" for k, n in summary["tensor_types"].items())
        print(f"{summary['path']}: GGUF {summary['architecture']}, {fmt.size(summary['bytes'])} ({types}), "
              f"pre-tokenizer {summary['pre_tokenizer']}", file=sys.stderr)
    print(summary["modelfile"], end="")
    if args.modelfile:
        print(f"Modelfile written to {args.modelfile}; then: ollama create NAME -f {args.modelfile}", file=sys.stderr)
    return 0


def add_cli(subparsers) -> None:
    from acik.models import MODEL_HELP

    p = subparsers.add_parser("convert", help="convert a model to GGUF (llama.cpp, Ollama) or a GGUF to a Hugging "
                              "Face directory")
    p.add_argument("src", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--to", required=True, choices=["gguf", "hf"], help="gguf: a .gguf file for llama.cpp and "
                   "Ollama; hf: a Hugging Face directory (from a .gguf source)")
    p.add_argument("--out", required=True, help="the .gguf file (--to gguf) or directory (--to hf) to write")
    p.add_argument("--type", choices=TYPES, help="GGUF tensor type of the 2-D weights (default f16; a LoRA adapter: "
                   "f32, or f16/bf16); norms stay F32, q4_0/q4_1 keep the embedding and output head at q8_0")
    p.add_argument("--modelfile", metavar="PATH", help="also write the Ollama Modelfile (printed either way) here")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="dtype of the Hugging Face "
                   "weights (--to hf; default float32, so quantized weights are not rounded twice)")
    p.set_defaults(func=_cmd_convert)
