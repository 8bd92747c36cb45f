"""GGUF in: the shipped SmolLM2-135M-Instruct Q4_1 file against transformers' GGUF loader, GGUF files written here
with `gguf.GGUFWriter` from tiny random Hugging Face models of every family against the source model, the block
conversions against the gguf package's own dequantization, and bad files. Slow-marked: files written by llama.cpp's
own converter (convert_hf_to_gguf.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers as tf
from gguf.quants import dequantize, quantize

from acik.formats import gguf_tensors as gt
from acik.formats.gguf import GGUFError, describe_gguf, load_gguf
from acik.quant.linear import Int4Linear, Int8Linear
from acik.quant.methods import dequantize_int4, dequantize_int8, unpack_nibbles
from hf_models import hf_logits, make_hf_model
from real_inputs import shipped_gguf as shipped

Q = gguf.GGMLQuantizationType
SEQ = 19


# --- the shipped model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm():
    """transformers' GGUF loader and tokenizer on the shipped file, and acik's two loads of it, shared."""
    path = shipped()
    tok = tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ref = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    text = ("The Eiffel Tower, completed in 1889 for the World's Fair, stands on the Champ de Mars in Paris and "
            "was for decades the tallest")
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        expected = ref(ids).logits.float()
    del ref
    dense = load_gguf(path, device="cpu", dtype=torch.float32, dequantize=True)
    stored = load_gguf(path, device="cpu", dtype=torch.float32, dequantize=False)
    with torch.no_grad():
        dense_logits, stored_logits = dense.model(ids), stored.model(ids)
    return dict(path=path, tok=tok, ids=ids, expected=expected, dense=dense, stored=stored,
                dense_logits=dense_logits, stored_logits=stored_logits)


def test_shipped_dequantized_matches_transformers(smollm):
    assert 25 <= smollm["ids"].shape[1] <= 40
    diff = (smollm["dense_logits"] - smollm["expected"]).abs().max().item()
    assert diff <= 1e-4, f"max |Δlogits| against transformers' GGUF loader = {diff}"


def test_shipped_config_and_types(smollm):
    cfg = smollm["stored"].config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.rope_theta) == (49152, 8192, 100000.0)
    assert cfg.tie_word_embeddings and cfg.eos_token_id == 2 and cfg.model_type == "llama"
    assert smollm["stored"].tensor_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    layers = [m for m in smollm["stored"].model.modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 210 and all(m.group_size == 32 for m in layers)
    lines = describe_gguf(smollm["path"])
    assert any("Q4_1" in line and "210" in line and "int4 g32" in line for line in lines), lines


def test_shipped_as_stored_close_and_answers_paris(smollm):
    dense, stored = smollm["dense_logits"], smollm["stored_logits"]
    rel = ((stored - dense).norm() / dense.norm()).item()
    assert rel <= 1e-2, f"as stored vs dequantized: relative logit error {rel}"
    tok = smollm["tok"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(prompt)["input_ids"]])
    model = smollm["stored"].model
    with torch.no_grad():
        for _ in range(10):
            nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            if nxt.item() == 2:
                break
    answer = tok.decode(ids[0, -10:])
    assert "Paris" in answer, answer


def _held_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor the model holds: parameters, buffers and the kernel layouts quantized layers keep,
    each storage counted once (the tied head shares the embedding's)."""
    tensors = list(model.parameters()) + list(model.buffers())
    for m in model.modules():
        kernel = getattr(m, "_kernel", None)
        tensors += [t for t in (kernel if isinstance(kernel, tuple) else ()) if isinstance(t, torch.Tensor)]
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def test_shipped_memory_as_stored(smollm):
    """Under 130 MB (the file is 98 MB; bf16 would be 270 MB): as loaded, and optimized for inference as generate,
    chat and serve run it, after a forward has built every kernel layout. (Without optimize, an int4 layer keeps
    its stored nibbles beside the kernel's copy once it has run: 163 MB.)"""
    import copy

    from acik.model.inference import optimize

    model = copy.deepcopy(smollm["stored"].model)  # optimize rewrites it; the other tests keep theirs
    assert isinstance(model.lm_head, Int8Linear)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tied head shares the table
    for m in model.modules():
        if hasattr(m, "_kernel"):
            m._kernel = None  # as loaded: no kernel layout built yet
    held = _held_bytes(model)
    assert held < 130e6, f"the Q4_1 model holds {held / 1e6:.1f} MB as loaded"
    optimize(model)
    with torch.no_grad():
        model(smollm["ids"])
    held = _held_bytes(model)
    assert held < 130e6, f"the Q4_1 model holds {held / 1e6:.1f} MB optimized, after a forward"


# --- writing GGUF files from tiny Hugging Face models ------------------------------------------------

SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)

FAMILIES = {
    "llama": ("llama", lambda: tf.LlamaConfig(**SMALL, tie_word_embeddings=False)),
    "llama-tied-bias": ("llama", lambda: tf.LlamaConfig(**SMALL, tie_word_embeddings=True, attention_bias=True)),
    "qwen2": ("qwen2", lambda: tf.Qwen2Config(**SMALL, tie_word_embeddings=False)),
    "qwen3": ("qwen3", lambda: tf.Qwen3Config(**SMALL, head_dim=32, tie_word_embeddings=False)),
    "olmo2": ("olmo2", lambda: tf.Olmo2Config(**SMALL, tie_word_embeddings=False)),
    "mixtral": ("llama", lambda: tf.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2,
                                                  tie_word_embeddings=False, sliding_window=None)),
}

_HF_TO_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm", "post_feedforward_layernorm": "post_ffw_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
               "mlp.gate": "ffn_gate_inp"}


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py), written out here as the converter has it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model, arch: str, cfg) -> dict[str, np.ndarray]:
    """A transformers model's state dict under GGUF names, as llama.cpp's converter lays it out."""
    out = {}
    post_attn = "post_attention_norm" if arch == "olmo2" else "ffn_norm"
    for name, t in model.state_dict().items():
        t = t.detach().float()
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
        if name in top:
            out[top[name]] = t.numpy()
            continue
        _, _, layer, rest = name.split(".", 3)
        stem, _, kind = rest.rpartition(".")
        if rest == "mlp.experts.gate_up_proj":
            gate, up = t.chunk(2, dim=1)
            out[f"blk.{layer}.ffn_gate_exps.weight"], out[f"blk.{layer}.ffn_up_exps.weight"] = gate.numpy(), up.numpy()
            continue
        if rest == "mlp.experts.down_proj":
            out[f"blk.{layer}.ffn_down_exps.weight"] = t.numpy()
            continue
        if arch == "llama" and stem in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = cfg.num_attention_heads if stem.endswith("q_proj") else cfg.num_key_value_heads
            t = _permute(t, heads)
        gname = post_attn if stem == "post_attention_layernorm" else _HF_TO_GGUF[stem]
        out[f"blk.{layer}.{gname}.{kind}"] = t.numpy()
    return out


def write_gguf(path: Path, arch: str, cfg, tensors: dict[str, np.ndarray], types: dict[str, Q] | None = None,
               extra: dict | None = None) -> Path:
    """A GGUF file: `cfg`'s shape under `arch`'s keys, `tensors` stored as `types` says (default F32)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    if getattr(cfg, "head_dim", None):
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if getattr(cfg, "num_local_experts", None):
        w.add_expert_count(cfg.num_local_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_eos_token_id(2)
    for key, value in (extra or {}).items():
        w.add_key_value(key, value[0], value[1])
    for name, t in tensors.items():
        qtype = (types or {}).get(name, Q.F32)
        if qtype == Q.F32:
            w.add_tensor(name, t.astype(np.float32))
        else:
            w.add_tensor(name, quantize(t.astype(np.float32), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(0, SMALL["vocab_size"], (2, SEQ), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_written_f32_matches_source(name, tmp_path, input_ids, one_thread):
    arch, make = FAMILIES[name]
    cfg = make()
    ref = make_hf_model(cfg, tmp_path / "hf")
    path = write_gguf(tmp_path / "m.gguf", arch, cfg, gguf_tensors(ref, arch, cfg))
    loaded = load_gguf(path, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        ours = loaded.model(input_ids)
    diff = (ours - hf_logits(ref, input_ids)).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |Δlogits| = {diff}"
    assert loaded.config.tie_word_embeddings == cfg.tie_word_embeddings
    assert loaded.config.num_experts == getattr(cfg, "num_local_experts", 0)


def test_written_quantized_types_held_as_stored(tmp_path, input_ids, one_thread):
    """Q4_0, Q4_1 and Q8_0 tensors in one file: held packed, logits those of the dequantized weights."""
    cfg = tf.LlamaConfig(**SMALL, tie_word_embeddings=False)
    ref = make_hf_model(cfg, tmp_path / "hf")
    tensors = gguf_tensors(ref, "llama", cfg)
    types = {n: (Q.Q4_0 if "attn" in n else Q.Q4_1 if "ffn_up" in n or "ffn_gate" in n else Q.Q8_0)
             for n in tensors if n.endswith(".weight") and tensors[n].ndim == 2 and "token_embd" not in n}
    path = write_gguf(tmp_path / "q.gguf", "llama", cfg, tensors, types)
    stored = load_gguf(path, device="cpu", dtype=torch.float32)
    dense = load_gguf(path, device="cpu", dtype=torch.float32, dequantize=True)
    attn = stored.model.model.layers[0].self_attn
    mlp = stored.model.model.layers[0].mlp
    assert isinstance(attn.q_proj, Int4Linear) and attn.q_proj.method == "int4"  # Q4_0: integer zero point
    assert isinstance(mlp.up_proj, Int4Linear) and mlp.up_proj.method == "int4-hqq"  # Q4_1: fractional
    assert isinstance(mlp.down_proj, Int8Linear) and isinstance(stored.model.lm_head, Int8Linear)
    assert stored.tensor_types == {"F32": 6, "Q4_0": 8, "Q4_1": 4, "Q8_0": 3}
    # Each packed layer holds exactly the weights the gguf package dequantizes (Q4_1: within fp16 rounding).
    for layer, dense_layer in ((attn.k_proj, dense.model.model.layers[0].self_attn.k_proj),
                               (mlp.gate_proj, dense.model.model.layers[0].mlp.gate_proj),
                               (mlp.down_proj, dense.model.model.layers[0].mlp.down_proj)):
        diff = (layer.dequantize(torch.float32) - dense_layer.weight).abs().max().item()
        assert diff <= 2e-3 * dense_layer.weight.abs().max().item(), diff
    with torch.no_grad():
        a, b = stored.model(input_ids), dense.model(input_ids)
    assert ((a - b).norm() / b.norm()).item() <= 1e-2


def test_sampling_defaults(tmp_path):
    cfg = tf.LlamaConfig(**SMALL, tie_word_embeddings=True)
    ref = make_hf_model(cfg, tmp_path / "hf")
    extra = {"general.sampling.temp": (0.2, gguf.GGUFValueType.FLOAT32),
             "general.sampling.top_p": (0.9, gguf.GGUFValueType.FLOAT32),
             "general.sampling.top_k": (40, gguf.GGUFValueType.INT32),
             "general.sampling.mirostat": (0, gguf.GGUFValueType.INT32)}
    path = write_gguf(tmp_path / "s.gguf", "llama", cfg, gguf_tensors(ref, "llama", cfg), extra=extra)
    got = load_gguf(path, device="cpu", dtype=torch.float32).generation_defaults
    assert got == {"temperature": pytest.approx(0.2), "top_p": pytest.approx(0.9), "top_k": 40}


# --- block conversions against the gguf package's dequantization ---------------------------------------

def _random_blocks(qtype: Q, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random K-quant bytes with sane fp16 super-block scales (the gguf package cannot write K-quants)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.full(raw.shape[:2], 0.004, np.float16).tobytes(), np.uint8).reshape(*raw.shape[:2], 2)
    if qtype in (Q.Q4_K, Q.Q5_K):  # d and dmin lead the block
        raw[..., 0:2], raw[..., 2:4] = scale, scale
    else:  # Q6_K: d ends it
        raw[..., -2:] = scale
    return raw.reshape(rows, -1)


def test_q4_k_onto_int4_exact_within_fp16():
    raw = _random_blocks(Q.Q4_K, 32, 512)
    ref = torch.from_numpy(dequantize(raw, Q.Q4_K))
    packed, scale, zero = gt.q4k_to_int4(raw, 32, 512)
    ours = dequantize_int4(unpack_nibbles(packed), scale, zero)
    assert (ours - ref).abs().max().item() <= 2 ** -10 * ref.abs().max().item()


@pytest.mark.parametrize("qtype,bound", [(Q.Q5_K, 0.05), (Q.Q6_K, 0.01)])
def test_k_quants_requantized(qtype, bound):
    """Q5_K onto int4 g32 (min-max), Q6_K onto int8 blocks of 32: the relative weight error they cost."""
    from acik.quant.methods import quantize_int8

    raw = _random_blocks(qtype, 32, 512)
    ref = torch.from_numpy(dequantize(raw, qtype))
    if qtype == Q.Q5_K:
        ours = dequantize_int4(unpack_nibbles(gt.int4_minmax(ref)[0]), *gt.int4_minmax(ref)[1:])
    else:
        ours = dequantize_int8(*quantize_int8(ref, 32))
    rel = ((ours - ref).norm() / ref.norm()).item()
    assert 0 < rel <= bound, rel


def test_unpermute_inverts_llama_permute():
    w = torch.randn(48, 8)
    for heads in (1, 3, 6):
        assert torch.equal(_permute(w, heads)[gt.unpermute_rows(48, heads)], w)


# --- bad files -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    cfg = tf.LlamaConfig(**{**SMALL, "num_hidden_layers": 1}, tie_word_embeddings=True)
    tmp = tmp_path_factory.mktemp("bad")
    ref = make_hf_model(cfg, tmp / "hf")
    return write_gguf(tmp / "ok.gguf", "llama", cfg, gguf_tensors(ref, "llama", cfg))


def test_truncated_file(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match=r"cut\.gguf: truncated or corrupt"):
        load_gguf(bad)


def test_bad_magic(tiny_file, tmp_path):
    bad = tmp_path / "magic.gguf"
    bad.write_bytes(b"GGML" + tiny_file.read_bytes()[4:])
    with pytest.raises(GGUFError, match=r"magic\.gguf: not a GGUF file"):
        load_gguf(bad)


def test_unknown_architecture(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    bad = tmp_path / "arch.gguf"
    # general.architecture's value "llama" -> "llamo", same length, so every offset stays valid
    i = data.index(b"general.architecture") + len(b"general.architecture") + 4 + 8
    bad.write_bytes(data[:i] + b"llamo" + data[i + 5:])
    with pytest.raises(GGUFError, match=r"arch\.gguf: GGUF architecture 'llamo' is not supported"):
        load_gguf(bad)
    with pytest.raises(GGUFError, match="llamo"):
        describe_gguf(bad)


def test_unknown_tensor_type(tiny_file, tmp_path):
    data = bytearray(tiny_file.read_bytes())
    name = b"token_embd.weight"
    i = data.index(name) + len(name)
    n_dims = int.from_bytes(data[i:i + 4], "little")
    at = i + 4 + 8 * n_dims  # after the dimensions: the type id (uint32)
    assert int.from_bytes(data[at:at + 4], "little") == Q.F32
    data[at:at + 4] = (250).to_bytes(4, "little")
    bad = tmp_path / "type.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"type\.gguf: unknown tensor type id 250"):
        load_gguf(bad)


# --- llama.cpp's own converter (slow) --------------------------------------------------------------------

def converter() -> Path:
    roots = [os.environ.get("ACIK_LLAMA_CPP_DIR"), Path.home() / ".cache" / "acik" / "llama.cpp"]
    roots += sorted((Path.home() / ".cache" / "acik" / "llama-cpp-src").glob("*/vendor/llama.cpp"))
    for root in roots:
        if root and (Path(root) / "convert_hf_to_gguf.py").exists():
            return Path(root) / "convert_hf_to_gguf.py"
    pytest.skip("llama.cpp's convert_hf_to_gguf.py not found; fetch it with: pip download --no-binary :all: "
                "--no-deps llama-cpp-python -d DIR && tar xzf DIR/llama_cpp_python-*.tar.gz -C DIR, then set "
                "ACIK_LLAMA_CPP_DIR=DIR/llama_cpp_python-<version>/vendor/llama.cpp")


# The converter writes the vocabulary into the file and accepts only tokenizers it recognises: the models get the
# shipped SmolLM2 tokenizer (pre-tokenizer "smollm"), so their vocabulary is its 49,152 tokens.
CONV = {**SMALL, "vocab_size": 49152}
CONVERTED = {
    "llama": lambda: tf.LlamaConfig(**CONV, tie_word_embeddings=False),
    "mistral": lambda: tf.MistralConfig(**CONV, tie_word_embeddings=False, sliding_window=None),
    "qwen2": lambda: tf.Qwen2Config(**CONV, tie_word_embeddings=False),
    "qwen3": lambda: tf.Qwen3Config(**CONV, head_dim=32, tie_word_embeddings=False),
    "olmo2": lambda: tf.Olmo2Config(**CONV, tie_word_embeddings=False),
    "mixtral": lambda: tf.MixtralConfig(**CONV, num_local_experts=4, num_experts_per_tok=2,
                                        tie_word_embeddings=False, sliding_window=None),
}


@pytest.fixture(scope="module")
def conversion_env(tmp_path_factory):
    """The converter script, a saved tokenizer to copy beside each model, and an environment whose `sentencepiece`
    is a stub: the converter's Llama path imports it before noticing there is no tokenizer.model, and acik does
    not depend on it."""
    script = converter()
    root = tmp_path_factory.mktemp("conv")
    path = shipped()
    tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(root / "tok")
    (root / "stub").mkdir()
    (root / "stub" / "sentencepiece.py").write_text("class SentencePieceProcessor:\n    pass\n")
    # Run the converter as it is, with one vocabulary shortcut: transformers' re-export of the GGUF tokenizer
    # splits text like SmolLM2's but not byte for byte like its original tokenizer.json, so the converter's
    # fingerprint check (get_vocab_base_pre) is told the name. Weights, names and metadata are untouched.
    runner = root / "run_converter.py"
    runner.write_text(
        "import runpy, sys\n"
        f"sys.path[:0] = [{str(script.parent)!r}, {str(script.parent / 'gguf-py')!r}]\n"
        "from conversion import base\n"
        "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'smollm'\n"
        f"sys.argv = [{str(script)!r}] + sys.argv[1:]\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": str(root / "stub")}
    return runner, root / "tok", env


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
@pytest.mark.parametrize("name", list(CONVERTED))
def test_llama_cpp_converter(name, outtype, tmp_path, input_ids, conversion_env):
    import shutil

    script, tok, env = conversion_env
    cfg = CONVERTED[name]()
    ref = make_hf_model(cfg, tmp_path / "hf")
    for f in tok.iterdir():
        shutil.copy(f, tmp_path / "hf" / f.name)
    out = tmp_path / f"m-{outtype}.gguf"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "hf"), "--outfile", str(out), "--outtype",
                           outtype], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = load_gguf(out, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        ours = stored.model(input_ids)
    expected = hf_logits(ref, input_ids)
    if outtype == "f32":
        diff = (ours - expected).abs().max().item()
        assert diff <= 1e-4, f"{name}: max |Δlogits| = {diff}"
        return
    # q8_0: every weight is the source's within Q8_0's rounding (half a step of its block's scale, plus up to 127
    # times fp16's rounding of that scale: 0.56 steps), the int8
    # layers compute what the dequantized weights do, and the logits move by the quantization alone. (A random
    # model re-randomised at std 0.25 amplifies 0.5% weight noise to ~10% of the largest logit, so the logits are
    # checked against the dequantized model, the weights against the source.)
    assert stored.tensor_types.get("Q8_0", 0) > 0 and any(isinstance(m, Int8Linear) for m in stored.model.modules())
    dense = load_gguf(out, device="cpu", dtype=torch.float32, dequantize=True)
    source = {k.replace(".mlp.gate.", ".mlp.router."): v for k, v in ref.state_dict().items()}
    for key, w in dense.model.state_dict().items():
        if key in source and w.dim() >= 2:
            blocks = source[key].reshape(-1, 32)
            step = blocks.abs().amax(dim=1, keepdim=True) / 127
            err = (w.reshape(-1, 32) - blocks).abs()
            assert bool((err <= 0.56 * step + 1e-6).all()), f"{name}: {key} off by more than Q8_0 rounding"
    with torch.no_grad():
        rel = ((ours - dense.model(input_ids)).norm() / expected.norm()).item()
    assert rel <= 1e-2, f"{name} q8_0: as stored vs dequantized, relative logit error {rel}"


def test_bad_files_from_the_cli(tiny_file, tmp_path, capsys):
    """Each bad file through the commands: one line naming the file and the problem, exit 2, no traceback."""
    from acik.cli import main

    data = tiny_file.read_bytes()
    i = data.index(b"general.architecture") + len(b"general.architecture") + 4 + 8
    bad = {"cut.gguf": (data[: len(data) // 2], "truncated or corrupt"),
           "magic.gguf": (b"GGML" + data[4:], "not a GGUF file"),
           "arch.gguf": (data[:i] + b"llamo" + data[i + 5:], "'llamo' is not supported")}
    for name, (content, problem) in bad.items():
        (tmp_path / name).write_bytes(content)
        for command in (["info", str(tmp_path / name)], ["generate", str(tmp_path / name), "hi"]):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert name in err and problem in err and "Traceback" not in err, (command, err)
