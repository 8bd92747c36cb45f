"""GGUF out: acik's exports of the shipped SmolLM2-135M-Instruct and of a tiny random Llama reload in acik with the
source's tokenizer ids, template, special tokens and logits, and load in transformers' GGUF loader with the source's
logits; what cannot be exported is refused with the reason."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import transformers as tf

from acik.cli import main as cli_main
from acik.formats import TokenizerError
from acik.formats.gguf import open_gguf
from acik.formats.gguf_vocab import pre_tokenizer_name
from acik.formats.gguf_writer import GGUFWriteError, write_gguf
from acik.loader import load
from hf_models import hf_logits, make_hf_model
from real_inputs import shipped_gguf as shipped

CHAT = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "42."}, {"role": "user", "content": "And in words?"}]
SAMPLES = [
    "The Eiffel Tower, completed in 1889, is 330 metres tall.", "I'm sure they'll say it's fine, won't they?",
    "def f(x):\n    return x ** 2  # squares\n\n\n", "Ünïcödé: déjà vu, naïve café, Straße, İstanbul",
    "日本語のテキストと中文文本", "  leading spaces and\ttabs\t\tand trailing   ", "3.14159 2,718 1e-5 0x1F 100000",
    "emoji 🙂🚀 and symbols ©®™ ← →", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>plain text after a special token", "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم",
    "URLs like https://example.com/a?b=c&d=e#frag and emails a.b@c.de",
]


def texts() -> list[str]:
    """A few hundred lines: the samples above, and wikitext-2 lines where the shared data is present."""
    lines = [f"{a} {b}" for a in SAMPLES for b in SAMPLES[:20]]
    root = Path(os.environ.get("ACIK_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    wiki = root / "wikitext-2" / "test.txt"
    if wiki.exists():
        lines += [line for line in wiki.read_text(encoding="utf-8").splitlines() if line.strip()][:200]
    return lines


def same_tokenizer(source, exported) -> None:
    """The exported tokenizer gives the source's ids, specials, flags and chat template."""
    for text in texts():
        assert exported.encode(text) == source.encode(text), text
    assert exported.chat_template == source.chat_template
    assert exported.apply_chat_template(CHAT) == source.apply_chat_template(CHAT)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "vocab_size"):
        assert getattr(exported, attr) == getattr(source, attr), attr
    assert set(exported.stop_token_ids) >= set(source.stop_token_ids)
    assert exported.all_special_ids == source.all_special_ids


# --- the shipped model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol():
    return load(shipped(), dequantize=True, dtype="float32")


@pytest.mark.parametrize("kind,main_type", [("f16", "F16"), ("q8_0", "Q8_0")])
def test_shipped_export_reloads_with_the_same_tokenizer(smol, tmp_path, kind, main_type):
    from acik.tokenizer import load_tokenizer

    if True:
        out = tmp_path / f"smol-{kind}.gguf"
        summary = write_gguf(smol, out, kind)
        assert summary["pre_tokenizer"] == "smollm"
        assert summary["tensor_types"] == {main_type: 211, "F32": 61}  # 2-D weights as asked, norms F32
        same_tokenizer(smol.tokenizer, load_tokenizer(out))
        reader = open_gguf(out)
        assert reader.fields["general.license"].contents() == "apache-2.0"
        assert len(reader.fields["acik.source.sha256"].contents()) == 64
        assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is False
        out.unlink()


@pytest.mark.slow
def test_shipped_q4_1_roundtrip_is_exact(smol, tmp_path):
    """The source is Q4_1: its dequantized weights re-quantize onto the same codes, so the reloaded model's logits
    are the source's to the bit (a wrong Q/K permutation or tensor name would not survive this)."""
    out = tmp_path / "smol-q4_1.gguf"
    write_gguf(smol, out, "q4_1")
    back = load(out, dequantize=True, dtype="float32")
    ids = torch.tensor([smol.tokenizer.encode(SAMPLES[0] + " " + SAMPLES[1])])
    with torch.no_grad():
        assert torch.equal(back.model(ids), smol.model(ids))


# --- a tiny random Llama with SmolLM2's tokenizer ------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama with a tokenizer `acik tokenizer` trains (GPT-4 regex: llama.cpp's `smaug-bpe`), sampling
    defaults and a license in its model card."""
    from acik.tokenizer import load_tokenizer, train_bpe

    root = tmp_path_factory.mktemp("tiny-llama")
    (root / "text.txt").write_text("\n".join(texts() * 3), encoding="utf-8")
    train_bpe([root / "text.txt"], 700, root / "hf", manifest=False, show_progress=False)
    vocab = load_tokenizer(root / "hf").vocab_size
    config = tf.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                            rope_theta=10000.0, tie_word_embeddings=False, eos_token_id=vocab - 4)
    hf = make_hf_model(config, root / "hf")
    (root / "hf" / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "top_p": 0.8,
                                                                    "top_k": 20, "do_sample": True}))
    (root / "hf" / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    llm = load(root / "hf", dtype="float32")
    ids = torch.tensor([llm.tokenizer.encode(" ".join(SAMPLES[:4]))])
    with torch.no_grad():
        ours = llm.model(ids)
    return dict(root=root, hf=hf, llm=llm, ids=ids, expected=hf_logits(hf, ids), ours=ours)


def test_tiny_llama_f32_reloads_in_acik(tiny):
    out = tiny["root"] / "tiny-f32.gguf"
    assert write_gguf(tiny["llm"], out, "f32")["pre_tokenizer"] == "smaug-bpe"
    back = load(out, dtype="float32")
    with torch.no_grad():
        diff = (back.model(tiny["ids"]) - tiny["ours"]).abs().max().item()
    assert diff <= 1e-5, diff
    assert back.generation_defaults == {"temperature": pytest.approx(0.3), "top_p": pytest.approx(0.8), "top_k": 20}
    same_tokenizer(tiny["llm"].tokenizer, back.tokenizer)
    reader = open_gguf(out)
    assert reader.fields["general.license"].contents() == "mit"
    assert len(reader.fields["acik.source.directory_hash"].contents()) == 64


def test_tiny_llama_f16_in_transformers_gguf_loader(tiny):
    """transformers' GGUF loader undoes llama.cpp's conventions on its own (names, the Q/K permutation): on the f16
    export it gives the source's logits once the source's 2-D weights are rounded to fp16 as the file stores them."""
    out = tiny["root"] / "tiny-f16.gguf"
    write_gguf(tiny["llm"], out, "f16")
    ref = tf.AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    rounded = copy.deepcopy(tiny["hf"])
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())
    expected = hf_logits(rounded, tiny["ids"])
    diff = (hf_logits(ref, tiny["ids"]) - expected).abs().max().item()
    assert diff <= 1e-3, diff
    assert (expected - tiny["expected"]).abs().max().item() > 1e-3  # the rounding is real, the check can fail


def test_tiny_llama_quantized_types_reload(tiny):
    """Each weight comes back within its type's rounding (relative to the tensor's largest weight): bf16 2^-8, q8_0
    half a step of 1/127, q4_1 half a step of a 15-level grid, q4_0 one step at the clipped end of its grid. (The
    random model's logits amplify even bf16 rounding, so the check is on the weights, in acik's row order.)"""
    source = tiny["llm"].model.state_dict()
    for kind, tol in (("bf16", 0.004), ("q8_0", 0.0045), ("q4_1", 0.07), ("q4_0", 0.13)):
        out = tiny["root"] / f"tiny-{kind}.gguf"
        write_gguf(tiny["llm"], out, kind)
        back = load(out, dequantize=True, dtype="float32").model.state_dict()
        worst = 0.0
        for name, w in source.items():
            if w.dim() == 2:
                err = ((back[name] - w).abs().max() / w.abs().max()).item()
                assert err <= tol, (kind, name, err)
                worst = max(worst, err)
            elif w.dim() == 1:
                assert torch.equal(back[name], w), (kind, name)  # norms stay F32
        assert worst > tol / 10, (kind, worst)  # the type was applied


def test_embedding_rows_past_the_tokenizer_become_unused_pad_tokens(tiny, tmp_path):
    """A model whose embedding has more rows than its tokenizer has tokens (Qwen2 pads to a multiple of 64 or 128)
    gets `[PADn]` tokens typed UNUSED for them, as llama.cpp's converter writes them; the real tokens keep their ids."""
    import shutil

    from acik.formats.gguf_tokenizer import UNUSED
    from acik.tokenizer import load_tokenizer

    src = tiny["root"] / "hf"
    vocab = tiny["llm"].config.vocab_size
    config = tf.LlamaConfig(vocab_size=vocab + 6, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    make_hf_model(config, tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, tmp_path / "hf" / name)
    write_gguf(load(tmp_path / "hf", dtype="float32"), tmp_path / "padded.gguf", "f32")
    fields = open_gguf(tmp_path / "padded.gguf").fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == vocab + 6 and tokens[vocab:] == [f"[PAD{i}]" for i in range(vocab, vocab + 6)]
    assert set(types[vocab:]) == {UNUSED} and UNUSED not in types[:vocab]
    back = load_tokenizer(tmp_path / "padded.gguf")
    for text in SAMPLES:
        assert back.encode(text) == tiny["llm"].tokenizer.encode(text)


def test_writing_over_the_source_file(tiny, tmp_path):
    """The file is written beside `out` and moved into place: a GGUF source can be re-exported onto itself, and no
    half-written file is left behind."""
    path = tmp_path / "m.gguf"
    write_gguf(tiny["llm"], path, "f32")
    write_gguf(load(path, dtype="float32"), path, "f16")
    assert load(path).config.torch_dtype == "float16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


# --- refusals ------------------------------------------------------------------------------------

def test_pre_tokenizer_names():
    from acik.tokenizer import GPT4_SPLIT_PATTERN

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert pre_tokenizer_name({"pre_tokenizer": smollm, "model": {}}) == "smollm"
    assert pre_tokenizer_name({"pre_tokenizer": byte_level, "model": {}}) == "gpt-2"
    split = {"type": "Split", "pattern": {"Regex": GPT4_SPLIT_PATTERN}, "behavior": "Isolated", "invert": False}
    acik_own = {"type": "Sequence", "pretokenizers": [split, {**byte_level, "use_regex": False}]}
    assert pre_tokenizer_name({"pre_tokenizer": acik_own, "model": {"ignore_merges": False}}) == "smaug-bpe"
    assert pre_tokenizer_name({"pre_tokenizer": acik_own, "model": {"ignore_merges": True}}) == "llama-bpe"
    with pytest.raises(TokenizerError, match="no regex"):
        pre_tokenizer_name({"pre_tokenizer": {**byte_level, "use_regex": False}, "model": {}})
    odd = {**split, "pattern": {"Regex": r"\w+"}}
    with pytest.raises(TokenizerError, match="none of llama.cpp's pre-tokenizers"):
        pre_tokenizer_name({"pre_tokenizer": odd, "model": {}})
    with pytest.raises(TokenizerError, match="not a list of regex splits"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}, "model": {}})


def test_refusals(tiny, tmp_path):
    with pytest.raises(GGUFWriteError, match="q5_k"):
        write_gguf(tiny["llm"], tmp_path / "x.gguf", "q5_k")
    tiny["llm"].config.hidden_act = "gelu"
    try:
        with pytest.raises(GGUFWriteError, match="hidden_act"):
            write_gguf(tiny["llm"], tmp_path / "x.gguf", "f16")
    finally:
        tiny["llm"].config.hidden_act = "silu"
    assert not (tmp_path / "x.gguf").exists()


# --- acik convert --------------------------------------------------------------------------------

def test_cli_to_gguf_writes_the_modelfile(tiny, capsys):
    out, mf = tiny["root"] / "cli" / "tiny.gguf", tiny["root"] / "Modelfile"
    assert cli_main(["convert", str(tiny["root"] / "hf"), "--to", "gguf", "--type", "q8_0", "--out", str(out),
                     "--modelfile", str(mf)]) == 0
    printed = capsys.readouterr().out
    text = mf.read_text()
    assert printed == text
    assert f"FROM {out.resolve()}\n" in text
    assert 'TEMPLATE """{{- if .System }}<|im_start|>system' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "PARAMETER temperature 0.3\n" in text and "PARAMETER top_k 20\n" in text
    assert "SYSTEM" not in text  # acik's ChatML template inserts no system prompt of its own
    assert open_gguf(out).tensors[1].tensor_type.name == "Q8_0"


def test_modelfile_of_the_shipped_model(smol):
    from acik.convert import modelfile

    text = modelfile(smol, "smol.gguf")
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert 'TEMPLATE """{{- if .System }}<|im_start|>system' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0.2\n" in text  # acik's chat default


def test_cli_gguf_to_hf_loads_in_transformers(tiny, tmp_path):
    """f32 GGUF -> HF directory -> transformers gives the source model's logits; the manifest names the GGUF."""
    from acik.manifest import sha256_file as sha256

    src = tmp_path / "tiny.gguf"
    write_gguf(tiny["llm"], src, "f32")
    assert cli_main(["convert", str(src), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    diff = (hf_logits(model, tiny["ids"]) - tiny["expected"]).abs().max().item()
    assert diff <= 1e-4, diff
    manifest = json.loads((tmp_path / "hf" / "acik.json").read_text())
    assert {"role": "source", "path": str(src), "sha256": sha256(src)} in manifest["parents"]
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["top_k"] == 20 and gen["do_sample"] is True


@pytest.mark.slow
def test_shipped_gguf_to_hf_matches_transformers_gguf_loader(tmp_path):
    path = shipped()
    assert cli_main(["convert", str(path), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    ref = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ours = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tok(" ".join(SAMPLES[:3]))["input_ids"]])
    diff = (hf_logits(ours, ids) - hf_logits(ref, ids)).abs().max().item()
    assert diff <= 1e-4, diff


def test_cli_bad_input_exits_2(tiny, tmp_path, capsys):
    from acik.tokenizer import save_byte_tokenizer

    with pytest.raises(SystemExit) as e:  # argparse: usage and the valid types, no traceback
        cli_main(["convert", str(tiny["root"] / "hf"), "--to", "gguf", "--type", "q5_k", "--out", "x.gguf"])
    assert e.value.code == 2 and "invalid choice: 'q5_k'" in capsys.readouterr().err

    plain = tmp_path / "byte-tokenizer"
    plain.mkdir()
    for name in ("config.json", "model.safetensors"):
        (plain / name).symlink_to(tiny["root"] / "hf" / name)
    save_byte_tokenizer(plain)
    assert cli_main(["convert", str(plain), "--to", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no llama.cpp pre-tokenizer" in err and "Traceback" not in err
    assert not (tmp_path / "x.gguf").exists()

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"),
                                                             "peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    assert cli_main(["convert", str(adapter), "--to", "gguf", "--out", str(tmp_path / "a.gguf")]) == 2
    err = capsys.readouterr().err
    assert "base model" in err and "not found" in err and "Traceback" not in err


# --- LoRA adapters -------------------------------------------------------------------------------

def test_lora_adapter_to_gguf(tiny, tmp_path, capsys):
    """An rsLoRA adapter on every linear layer and the (untied) head -> llama.cpp's adapter GGUF: its names, shapes
    (A [r, in], B [out, r]) and alpha are llama.cpp's, and llama.cpp's arithmetic W + (alpha / r) B A on the base
    GGUF's tensors gives acik's adapted weights once the Q/K rows are put back in acik's order."""
    from acik.formats.gguf_lora import apply_lora_gguf, read_lora_gguf
    from acik.formats.gguf_tensors import unpermute_rows
    from acik.formats.gguf_writer import gguf_name
    from acik.train.lora import apply_lora, lora_layers, save_adapter

    base_dir = tiny["root"] / "hf"
    model = load(base_dir, dtype="float32").model
    names = apply_lora(model, "all-linear", r=4, alpha=8, use_rslora=True) + apply_lora(model, "lm_head", r=4,
                                                                                         alpha=8, use_rslora=True)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.1)
    adapter = save_adapter(model, tmp_path / "adapter", base_model=str(base_dir), use_rslora=True)
    out, mf = tmp_path / "adapter.gguf", tmp_path / "Modelfile"
    assert cli_main(["convert", str(adapter), "--to", "gguf", "--out", str(out), "--modelfile", str(mf)]) == 0
    assert "rank 4, alpha 16" in capsys.readouterr().err  # rsLoRA: 8 / sqrt(4) = 16 / 4
    text = mf.read_text()
    assert f"ADAPTER {out.resolve()}\n" in text and "FROM " in text

    got = read_lora_gguf(out)
    assert got["alpha"] == 16.0 and got["architecture"] == "llama"
    cfg = tiny["llm"].config
    expect = {gguf_name(f"{n}.weight", "llama") + s for n in names for s in (".lora_a", ".lora_b")}
    assert set(got["tensors"]) == expect and "blk.0.attn_q.weight.lora_a" in expect
    layers = lora_layers(model)
    for n, layer in layers.items():
        stem = gguf_name(f"{n}.weight", "llama")
        assert got["tensors"][stem + ".lora_a"].shape == (4, layer.in_features)
        assert got["tensors"][stem + ".lora_b"].shape == (layer.out_features, 4)

    base_gguf = tmp_path / "base.gguf"
    write_gguf(tiny["llm"], base_gguf, "f32")
    base = open_gguf(base_gguf)
    weights = {t.name: torch.from_numpy(t.data.copy()).reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
               for t in base.tensors}
    merged = apply_lora_gguf(weights, got)
    for n, layer in layers.items():
        w = merged[gguf_name(f"{n}.weight", "llama")]
        short = n.rsplit(".", 1)[-1]
        if short in ("q_proj", "k_proj"):
            w = w[unpermute_rows(w.shape[0], cfg.num_attention_heads if short == "q_proj" else cfg.num_key_value_heads)]
        want = layer.base_layer.weight.detach() + layer.delta_weight().detach()
        assert torch.allclose(w, want, atol=1e-5), n
        assert (layer.delta_weight().abs().max() > 1e-2), n  # the adapter moves the weight


def test_lora_adapter_refusals(tiny, tmp_path):
    from acik.formats.gguf_lora import write_lora_gguf

    with pytest.raises(GGUFWriteError, match="adapters in float"):
        write_lora_gguf(tiny["llm"], tmp_path / "a.gguf", "q8_0")
    with pytest.raises(GGUFWriteError, match="no LoRA layers"):
        write_lora_gguf(tiny["llm"], tmp_path / "a.gguf")


# --- against llama.cpp's own converter (slow) ----------------------------------------------------

@pytest.fixture(scope="module")
def conversion_env(tmp_path_factory):
    """test_gguf's runner of llama.cpp's converter (skips with the download command where it is absent)."""
    import test_gguf

    return test_gguf.conversion_env.__wrapped__(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("name,outtype", [("llama", "f32"), ("llama", "q8_0"), ("llama", "bf16"), ("qwen2", "f16"),
                                          ("qwen3", "q8_0"), ("olmo2", "f32")])
def test_same_file_as_llama_cpp_converter(name, outtype, tmp_path, conversion_env):
    """acik's export of a tiny random model and llama.cpp's convert_hf_to_gguf.py's hold the same tensors byte for
    byte (names, types, data: Q/K permutation, orientation, quantization) and the same metadata where both write a
    key. Differences allowed: the name, acik's keys, keys only one side writes, and `tokenizer.ggml.pre`: the
    converter is told 'smollm' (test_gguf's runner), while the tokenizer.json here (transformers' re-export of the
    GGUF tokenizer) really splits like plain GPT-2, which acik names."""
    import shutil
    import subprocess
    import sys

    from test_gguf import CONVERTED

    runner, tok, env = conversion_env
    make_hf_model(CONVERTED[name](), tmp_path / "hf")
    for f in tok.iterdir():
        shutil.copy(f, tmp_path / "hf" / f.name)
    theirs, ours = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    done = subprocess.run([sys.executable, str(runner), str(tmp_path / "hf"), "--outfile", str(theirs),
                           "--outtype", outtype], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert write_gguf(load(tmp_path / "hf", dtype="float32"), ours, outtype)["pre_tokenizer"] == "gpt-2"
    a, b = open_gguf(theirs), open_gguf(ours)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(ta) == set(tb)
    for n, t in ta.items():
        assert t.tensor_type == tb[n].tensor_type, n
        assert bytes(t.data.tobytes()) == bytes(tb[n].data.tobytes()), n
    ma = {k: f.contents() for k, f in a.fields.items() if not k.startswith("GGUF.")}  # GGUF.kv_count ...
    mb = {k: f.contents() for k, f in b.fields.items() if not k.startswith("GGUF.")}
    for k in set(ma) & set(mb) - {"general.name", "tokenizer.ggml.pre"}:
        assert ma[k] == mb[k], k
    assert set(ma) - set(mb) <= {"general.size_label", "tokenizer.ggml.add_bos_token"}
