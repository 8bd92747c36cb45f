"""One prepared run of acik on a CUDA GPU: what works there, and how fast, in about three minutes.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out OUT                          # the GPU machine
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --quick --threads 1 --out /tmp/gc  # shake-out

Sections (each check is caught on its own: a failure is recorded as FAIL with its traceback, and the
run goes on):
  1 environment      versions, GPU, bf16, which optional modules are missing
  2 parity           acik vs transformers logits on tiny random Llama, Mistral (sliding window), Qwen3,
                     Mixtral and gpt-oss: fp32 (TF32 off) and bf16; the MoE `_grouped_mm` path vs the
                     per-expert loop (forward and backward)
  3 generation       greedy `llm.generate` vs transformers `generate`, a batch of 4 vs each alone,
                     seeded sampling with penalties, prompt logprobs
  4 decode           124M Llama in bf16, batch-1 tokens/s: acik engine vs transformers generate, 8
                     concurrent requests, and the engine with compile=True (in a child process, capped)
  5 training         acik's training loop (bf16 autocast) tokens/s and MFU, eager and compile=True (child
                     process, capped); acik and transformers LlamaForCausalLM in the same plain loop
  6 distributed      torchrun (1 process) of `acik train` as is, then with FSDP2 and DDP forced on one
                     process over NCCL; the FSDP checkpoint resumed in a plain process
  7 quantization     int8, int4, nf4, mxfp4, w8a8 at load: forward, one-token decode, relative error,
                     save/load round trip
  8 fine-tuning      LoRA and QLoRA through `acik.finetune`: loss, peak memory; the LoRA adapter vs peft

Writes OUT/gpu_check.json (everything) and OUT/gpu_check.md (the table) after every check, so an
interrupted run still leaves what it measured; prints the table at the end. Temporary files go to
the system temp folder and are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import faulthandler
import gc
import importlib.util
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

# Quiet, offline transformers: the lead reads only the tail of this run's output.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests"), str(REPO / "benchmarks")]

from timing import run_times  # noqa: E402

from hf_models import hf_logits, make_hf_model  # noqa: E402  (tests/hf_models.py: needs only torch)

ARGS: argparse.Namespace
DEV: torch.device
TMP: Path
START = time.perf_counter()
RESULTS: list[dict] = []


# ------------------------------------------------------------------------------------------------
# Plumbing: checks, timing, results


def remaining() -> float:
    return ARGS.budget - (time.perf_counter() - START)


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize(DEV)


def median_time(fn, repeats: int) -> float:
    """Median wall seconds of `fn` (one untimed warm-up), the device drained before and after each call."""
    def call():
        fn()
        sync()

    sync()
    return statistics.median(run_times(call, repeats))


def free_memory() -> None:
    gc.collect()
    if DEV.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def exact_fp32():
    """fp32 matmuls in full precision (no TF32: torch's default for matmuls, made sure of here) for parity."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _short(text: str, n: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 3] + "..."


def check(section: str, name: str, fn, *args, **kwargs) -> dict:
    """Run one check: fn(...) -> (status, numbers, details). An exception is a FAIL, never the end of the run."""
    t0 = time.perf_counter()
    try:
        status, numbers, details = fn(*args, **kwargs)
    except Exception as e:  # every failure is information; the next check still runs
        tb = traceback.format_exc()
        status, numbers, details = "FAIL", f"{type(e).__name__}: {_short(e)}", {"traceback": tb}
        print("".join(traceback.format_exception(e, limit=-4)).rstrip(), file=sys.stderr, flush=True)
    row = {"section": section, "check": name, "status": status, "numbers": numbers,
           "seconds": round(time.perf_counter() - t0, 1), "details": details}
    RESULTS.append(row)
    print(f"[{time.perf_counter() - START:6.1f}s] {section} / {name}: {status}  {numbers}", flush=True)
    save()
    free_memory()
    return row


def run_child(cmd: list[str], timeout: float, **env: str) -> tuple[int | None, str, str]:
    """(exit code, stdout, stderr) of `cmd` in its own process group; on timeout the whole group (torchrun's
    workers, inductor's compile workers) is killed and the exit code is None."""
    full_env = {**os.environ, **env,
                "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return _short(lines[-1]) if lines else "no output"


def skip(section: str, name: str, why: str) -> None:
    check(section, name, lambda: ("SKIP", why, {}))


def table() -> str:
    lines = ["| section | check | result | numbers | s |", "|---|---|---|---|---:|"]
    for r in RESULTS:
        numbers = _short(str(r["numbers"]).replace("|", "/"), 260)
        lines.append(f"| {r['section']} | {r['check']} | {r['status']} | {numbers} | {r['seconds']} |")
    return "\n".join(lines)


def save() -> None:
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv, "device": str(DEV), "quick": ARGS.quick,
            "elapsed_s": round(time.perf_counter() - START, 1)}
    (out / "gpu_check.json").write_text(json.dumps({"meta": meta, "results": RESULTS}, indent=2, default=str))
    (out / "gpu_check.md").write_text(f"# acik GPU check\n\n{json.dumps(meta)}\n\n{table()}\n")


def fmt(x, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def worst(*statuses: str) -> str:
    order = ["PASS", "INFO", "SKIP", "WARN", "FAIL"]
    return max(statuses, key=order.index)


def stats_logits(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
    return {"max_abs": (ours - ref).abs().max().item(), "ref_max": ref.abs().max().item(),
            "rel": ((ours - ref).norm() / ref.norm()).item(),
            "argmax_agree": (ours.argmax(-1) == ref.argmax(-1)).float().mean().item()}


def tolerate_missing_matplotlib() -> None:
    # The end-of-run report draws a loss curve with matplotlib; without it, skip only the picture.
    if importlib.util.find_spec("matplotlib") is None:
        import acik.train.report as report

        report.plot_loss = lambda records, out: None


# ------------------------------------------------------------------------------------------------
# Tiny Hugging Face models (the families of tests/test_parity.py and tests/test_moe_parity.py)

SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def family_configs() -> dict:
    import transformers as tf

    cases = {
        "llama": lambda: tf.LlamaConfig(**SMALL, tie_word_embeddings=False),
        "mistral-window": lambda: tf.MistralConfig(**SMALL, sliding_window=7),
        "qwen3": lambda: tf.Qwen3Config(**SMALL, head_dim=32),
        "mixtral": lambda: tf.MixtralConfig(**{**SMALL, "intermediate_size": 48}, num_local_experts=4,
                                            num_experts_per_tok=2, sliding_window=8, tie_word_embeddings=False),
    }
    if hasattr(tf, "GptOssConfig"):
        rope = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                "truncate": False, "original_max_position_embeddings": 4096}
        oss = {**SMALL, "intermediate_size": 64, "max_position_embeddings": 131072}
        cases["gpt-oss"] = lambda: tf.GptOssConfig(**oss, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                                   sliding_window=6, rope_parameters=rope, tie_word_embeddings=False)
    return cases


_HF_DIRS: dict[str, tuple[Path, object]] = {}


def hf_dir(name: str, make_config=None) -> tuple[Path, object]:
    """(directory, CPU fp32 transformers model) of a re-randomised tiny model, built once per run."""
    if name not in _HF_DIRS:
        cfg = (make_config or family_configs()[name])()
        path = TMP / "hf" / name
        _HF_DIRS[name] = (path, make_hf_model(cfg, path))
    return _HF_DIRS[name]


def prompt_ids(n: int, seed: int, vocab: int = 97) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# ------------------------------------------------------------------------------------------------
# 1. Environment


def env_check():
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "device": str(DEV), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "grouped_mm": hasattr(torch, "_grouped_mm"),
            "GptOssConfig": hasattr(transformers, "GptOssConfig")}
    try:
        import peft

        info["peft"] = peft.__version__
    except Exception as e:  # peft is optional: section 8 reports what it needs
        info["peft"] = f"unavailable ({type(e).__name__})"
    optional = ("yaml", "safetensors", "tokenizers", "numpy", "tqdm", "matplotlib", "jinja2", "xxhash",
                "fastapi", "trafilatura", "datasketch", "zstandard", "pyarrow", "huggingface_hub", "peft")
    info["missing_modules"] = [m for m in optional if importlib.util.find_spec(m) is None]
    status = "INFO"
    numbers = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if DEV.type == "cuda":
        if not torch.cuda.is_available():
            return "FAIL", "CUDA asked for but torch sees no GPU", info
        p = torch.cuda.get_device_properties(DEV)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported(), fp32_matmul_precision=torch.get_float32_matmul_precision())
        try:
            v = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e:  # an informational field only
            info["nccl"] = f"unknown ({type(e).__name__})"
        numbers = (f"{p.name} sm{p.major}{p.minor} {info['memory_gib']} GiB, bf16 {info['bf16']}, CUDA "
                   f"{torch.version.cuda}, NCCL {info['nccl']}; " + numbers)
    if info["missing_modules"]:
        numbers += f"; missing: {', '.join(info['missing_modules'])}"
    return status, numbers, info


# ------------------------------------------------------------------------------------------------
# 2. Parity


def parity_family(name: str):
    import acik

    path, cpu_ref = hf_dir(name)
    ids = torch.randint(0, 97, (2, 33), generator=torch.Generator().manual_seed(1)).to(DEV)
    ref = copy.deepcopy(cpu_ref).to(DEV)
    with exact_fp32(), torch.no_grad():
        expected = hf_logits(ref, ids)
        ours = acik.load(path, device=str(DEV), dtype="float32").model(ids)
    fp32 = stats_logits(ours, expected)
    ref16 = ref.to(torch.bfloat16)
    with torch.no_grad():
        theirs16 = hf_logits(ref16, ids)
        ours16 = acik.load(path, device=str(DEV), dtype="bfloat16").model(ids).float()
    bf16 = stats_logits(ours16, theirs16)
    err_ours = (ours16 - expected).abs().mean().item()
    err_hf = (theirs16 - expected).abs().mean().item()
    s32 = "PASS" if fp32["max_abs"] <= 1e-4 else "WARN" if fp32["max_abs"] <= 1e-3 else "FAIL"
    # bf16: acik's rounding error (against the fp32 reference) should be no worse than transformers'.
    s16 = "PASS" if err_ours <= 1.5 * err_hf + 1e-3 and bf16["argmax_agree"] >= 0.9 else "WARN"
    numbers = (f"fp32 maxΔ {fp32['max_abs']:.1e} (logits up to {fp32['ref_max']:.0f}); bf16 maxΔ "
               f"{bf16['max_abs']:.2f}, argmax {bf16['argmax_agree']:.0%}, mean err vs fp32 acik {err_ours:.3f} / "
               f"transformers {err_hf:.3f}")
    return worst(s32, s16), numbers, {"fp32": fp32, "bf16": bf16, "bf16_err_vs_fp32": {"acik": err_ours,
                                                                                        "transformers": err_hf}}


@contextlib.contextmanager
def expert_loop_only():
    """Make acik's MoE take its per-expert loop instead of `torch._grouped_mm`."""
    from acik.model import moe

    original = moe._grouped_mm_ok
    moe._grouped_mm_ok = lambda x, w: False
    try:
        yield
    finally:
        moe._grouped_mm_ok = original


def grouped_mm_kernel():
    """`grouped_mm_linear` (one fused kernel) vs the per-expert loop in bf16, with empty groups, forward and
    backward, both measured against an fp32 loop."""
    from acik.model import moe

    gen = torch.Generator().manual_seed(0)
    E, H, inter = 8, 256, 512
    sizes = torch.tensor([70, 0, 130, 5, 0, 211, 64, 120])  # zero-size groups: experts nobody picked
    n = int(sizes.sum())
    x32 = torch.randn(n, H, generator=gen)
    w32 = torch.randn(E, inter, H, generator=gen) * H ** -0.5
    b32 = torch.randn(E, inter, generator=gen) * 0.1
    g = torch.randn(n, inter, generator=gen).to(DEV)

    def run(fn, dtype):
        x, w, b = (t.to(DEV, dtype).requires_grad_() for t in (x32, w32, b32))
        y = fn(x, w, sizes.to(DEV), b)
        grads = None
        if DEV.type == "cuda":  # the CPU `_grouped_mm` has no reliable backward (acik never uses it there)
            (y.float() * g).sum().backward()
            grads = [t.grad.float() for t in (x, w, b)]
        return y.float().detach(), grads

    with expert_loop_only(), exact_fp32():
        ref, ref_grads = run(moe.grouped_linear, torch.float32)
        loop, loop_grads = run(moe.grouped_linear, torch.bfloat16)
    fused, fused_grads = run(moe.grouped_mm_linear, torch.bfloat16)
    probe = torch.zeros(4, H, dtype=torch.bfloat16, device=DEV)
    used = moe._grouped_mm_ok(probe, w32.to(DEV, torch.bfloat16))

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    d = {"fused_vs_loop": rel(fused, loop), "fused_vs_fp32": rel(fused, ref), "loop_vs_fp32": rel(loop, ref),
         "acik_dispatch_uses_grouped_mm": used}
    if fused_grads:
        d["grad_fused_vs_fp32"] = [rel(a, b) for a, b in zip(fused_grads, ref_grads)]
        d["grad_loop_vs_fp32"] = [rel(a, b) for a, b in zip(loop_grads, ref_grads)]
    ok = d["fused_vs_fp32"] <= 2 * d["loop_vs_fp32"] + 1e-2
    if fused_grads:
        ok = ok and all(f <= 2 * lo + 1e-2 for f, lo in zip(d["grad_fused_vs_fp32"], d["grad_loop_vs_fp32"]))
    numbers = (f"rel maxΔ fused-loop {d['fused_vs_loop']:.1e}; vs fp32: fused {d['fused_vs_fp32']:.1e}, loop "
               f"{d['loop_vs_fp32']:.1e}")
    if fused_grads:
        numbers += (f"; grads(x,w,b) vs fp32 fused {', '.join(f'{v:.1e}' for v in d['grad_fused_vs_fp32'])} / loop "
                    f"{', '.join(f'{v:.1e}' for v in d['grad_loop_vs_fp32'])}")
    numbers += f"; acik dispatch uses it here: {used}"
    return ("PASS" if ok else "FAIL"), numbers, d


def grouped_mm_model():
    """A Mixtral's bf16 logits through acik's dispatch (grouped_mm on sm90+) vs the per-expert loop."""
    import acik

    path, _ = hf_dir("mixtral")
    ids = torch.randint(0, 97, (2, 33), generator=torch.Generator().manual_seed(1)).to(DEV)
    llm = acik.load(path, device=str(DEV), dtype="bfloat16")
    with torch.no_grad():
        fused = llm.model(ids)
        with expert_loop_only():
            loop = llm.model(ids)
    s = stats_logits(fused, loop)
    status = "PASS" if s["rel"] <= 2e-2 and s["argmax_agree"] >= 0.9 else "WARN"
    return status, f"rel ‖Δ‖ {s['rel']:.1e}, maxΔ {s['max_abs']:.3f}, argmax {s['argmax_agree']:.0%}", s


def section_parity() -> None:
    for name in family_configs():
        check("2 parity", name, parity_family, name)
    check("2 parity", "MoE grouped_mm kernel", grouped_mm_kernel)
    check("2 parity", "MoE grouped_mm in Mixtral", grouped_mm_model)


# ------------------------------------------------------------------------------------------------
# 3. Generation


def gen_llm():
    import acik

    path, cpu_ref = hf_dir("llama")
    return acik.load(path, device=str(DEV), dtype="float32"), copy.deepcopy(cpu_ref).to(DEV)


def gen_greedy():
    llm, ref = gen_llm()
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    n = 8 if ARGS.quick else 32
    prompts = [prompt_ids(k, seed=k) for k in (5, 11, 17, 23)]
    try:
        with exact_fp32():
            matched = []
            for p in prompts:
                with torch.no_grad():
                    out = ref.generate(torch.tensor([p], device=DEV), max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False, output_logits=True, return_dict_in_generate=True)
                expected = out.sequences[0, len(p):].tolist()
                # Compare up to the reference's first near-tie (a 1e-6 difference may flip it).
                top2 = torch.stack(out.logits)[:, 0].float().topk(2).values
                margins = (top2[:, 0] - top2[:, 1]).tolist()
                m = min(next((i for i, v in enumerate(margins) if v < 1e-4), n) + 1, n)
                ours = llm.generate(p, max_new_tokens=n, temperature=0, ignore_eos=True)
                matched.append((ours[:m] == expected[:m], m))
            alone = [llm.generate(p, max_new_tokens=n, temperature=0, ignore_eos=True) for p in prompts]
            batch = llm.generate(prompts, max_new_tokens=n, temperature=0, ignore_eos=True)
    finally:
        llm.engine().close()
    same = sum(ok for ok, _ in matched)
    batch_ok = batch == alone
    status = "PASS" if same == len(prompts) and batch_ok else "FAIL"
    numbers = (f"{same}/{len(prompts)} prompts equal transformers for {n} tokens (compared up to "
               f"{[m for _, m in matched]}); batch of 4 == each alone: {batch_ok}")
    return status, numbers, {"matched": matched, "batch_equals_alone": batch_ok}


def gen_sampling():
    from acik.engine import Engine, Request

    llm, ref = gen_llm()
    p = prompt_ids(12, seed=3)
    opts = dict(max_new_tokens=16, temperature=1.5, top_p=0.9, top_k=40, repetition_penalty=1.2,
                frequency_penalty=0.5, presence_penalty=0.5, ignore_eos=True)
    with Engine(llm, max_batch_size=4) as engine:
        def sample(seed):
            h = engine.submit(Request(prompt_ids=p, seed=seed, **opts))
            list(h)
            return h.token_ids

        a, b, c = sample(7), sample(7), sample(8)
        h = engine.submit(Request(prompt_ids=p, max_new_tokens=0, prompt_logprobs=True))
        list(h)
        ours = torch.tensor(h.prompt_logprobs[1:])
    with exact_fp32(), torch.no_grad():
        lp = torch.log_softmax(ref(torch.tensor([p], device=DEV)).logits[0].float(), -1)
    expected = lp[torch.arange(len(p) - 1), torch.tensor(p[1:])].cpu()
    d_lp = (ours - expected).abs().max().item()
    ok = a == b and len(a) == 16 and d_lp <= 1e-4  # seed 8 may well give the same tokens: peaked logits
    numbers = (f"seed 7 twice equal: {a == b}, seed 8 differs: {a != c}; prompt logprobs maxΔ vs transformers "
               f"{d_lp:.1e}")
    return ("PASS" if ok else "FAIL"), numbers, {"seed7": a, "seed8": c, "prompt_logprobs_max_abs": d_lp}


def section_generation() -> None:
    check("3 generation", "greedy vs transformers, batch", gen_greedy)
    check("3 generation", "sampling + penalties, logprobs", gen_sampling)


# ------------------------------------------------------------------------------------------------
# 4. Decode speed (the model of benchmarks/decode.py)


def decode_model():
    """(model in bf16 on DEV, config, prompt): benchmarks/decode.py's 124M Llama (tiny with --quick)."""
    from acik.config import preset
    from acik.model import Transformer

    cfg = preset("124m")
    if ARGS.quick:
        cfg = preset("124m", hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1000)
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.init_weights(0)
    model.to(DEV)
    for p in model.parameters():  # parameters only: RoPE frequencies stay fp32, as acik.load leaves them
        p.data = p.data.to(torch.bfloat16)
    prompt = torch.randint(0, cfg.vocab_size, (16,), generator=torch.Generator().manual_seed(0)).tolist()
    return model.eval(), cfg, prompt


def decode_sizes() -> tuple[int, int]:
    return (16, 2) if ARGS.quick else (128, 3)  # new tokens, repeats


def engine_rates(model, cfg, prompt, compile: bool = False, on_first=None, optimize: bool = False) -> dict:
    """Batch-1 decode tokens/s ((T(n) - T(1)) / (n - 1), so prefill does not count) and the aggregate rate of
    8 concurrent requests, through acik's Engine (`optimize`: LLM.optimize first; on a GPU that fuses the
    projections, nothing is prepacked)."""
    from acik.engine import Engine, Request
    from acik.llm import LLM

    new, repeats = decode_sizes()
    llm = LLM(model, cfg)
    if optimize:
        llm.optimize()
    engine = Engine(llm, max_batch_size=8, max_seq_len=len(prompt) + new + 8, compile=compile)

    def run(n: int, copies: int = 1) -> None:
        handles = [engine.submit(Request(prompt_ids=prompt, max_new_tokens=n, temperature=0, ignore_eos=True))
                   for _ in range(copies)]
        for h in handles:
            list(h)

    try:
        t0 = time.perf_counter()
        run(new)  # the first call: kernels (and with compile=True, the compiled graphs)
        first = time.perf_counter() - t0
        if on_first:
            on_first(first)
        t1 = median_time(lambda: run(1), repeats)
        tn = median_time(lambda: run(new), repeats)
        concurrent = 8 * new / median_time(lambda: run(new, 8), repeats)
    finally:
        engine.close()
    return {"first_call_s": first, "tok_s": (new - 1) / max(tn - t1, 1e-9), "concurrent8_tok_s": concurrent}


def decode_eager():
    from decode import hf_model

    model, cfg, prompt = decode_model()
    new, repeats = decode_sizes()
    ours = engine_rates(model, cfg, prompt)
    ref = hf_model(model, cfg, torch.bfloat16, DEV)
    ids = torch.tensor([prompt], device=DEV)

    def hf(n: int) -> None:
        with torch.no_grad():
            ref.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    theirs = (new - 1) / max(median_time(lambda: hf(new), repeats) - median_time(lambda: hf(1), repeats), 1e-9)
    fused = engine_rates(decode_model()[0], cfg, prompt, optimize=True)
    d = {**ours, "transformers_tok_s": theirs, "params_m": model.num_parameters() / 1e6, "new_tokens": new,
         "repeats": repeats, "optimized_tok_s": fused["tok_s"],
         "optimized_concurrent8_tok_s": fused["concurrent8_tok_s"]}
    numbers = (f"{d['params_m']:.0f}M bf16, batch 1: acik {ours['tok_s']:.0f} tok/s (optimized {fused['tok_s']:.0f}), "
               f"transformers {theirs:.0f} tok/s ({ours['tok_s'] / theirs:.2f}×); 8 concurrent: "
               f"{ours['concurrent8_tok_s']:.0f} tok/s aggregate (optimized {fused['concurrent8_tok_s']:.0f})")
    return "INFO", numbers, d


def part_decode_compile(report) -> dict:
    """Child process: the engine with compile=True (its first call, then the rates)."""
    model, cfg, prompt = decode_model()
    return engine_rates(model, cfg, prompt, compile=True,
                        on_first=lambda s: report({"first_call_s": s, "stage": "measuring"}))


# ------------------------------------------------------------------------------------------------
# 5. Training


def train_config():
    from acik.config import ModelConfig

    if ARGS.quick:
        return ModelConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           tie_word_embeddings=True), 64, 4, 6
    return ModelConfig(vocab_size=320, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                       tie_word_embeddings=True), 512, 16, 30  # config, seq_len, batch, steps


def corpus() -> Path:
    """A UTF-8 text file of this repository's docs and sources (the shared data folder is not here)."""
    path = TMP / "corpus.txt"
    if not path.exists():
        files = sorted(REPO.glob("*.md")) + sorted((REPO / "docs").glob("*.md")) + sorted((REPO / "src").rglob("*.py"))
        text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
        path.write_text(text * max(1, 300_000 // max(len(text), 1)), encoding="utf-8")
    return path


def run_train_loop(compile: bool) -> dict:
    """acik.train.loop.train on the byte-level corpus; tokens/s and MFU as the loop logs them."""
    from acik.model import Transformer
    from acik.train.data import load_data, rank_micro_batches
    from acik.train.distributed import Dist
    from acik.train.loop import TrainSettings, train
    from acik.train.report import read_metrics

    tolerate_missing_matplotlib()
    cfg, seq, batch, steps = train_config()
    data = load_data(corpus())
    s = TrainSettings(model=None, seq_len=seq, batch_size=batch, max_steps=steps, warmup_steps=max(2, steps // 6),
                      log_every=max(1, steps // 6), eval_every=0, checkpoint_every=0, keep_checkpoints=1,
                      device=DEV.type, compile=compile, progress=False)
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.init_weights(0)
    model.to(DEV)
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEV)
    run_dir = Path(tempfile.mkdtemp(dir=TMP, prefix="train-"))
    result = train(model, lambda step: rank_micro_batches(data.train, seq, batch, batch, s.seed, step, 0, 1), s,
                   run_dir, Dist(device=DEV))
    recs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    mfus = [r["mfu"] for r in recs[1:] if "mfu" in r]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"tokens_per_s": result.tokens_per_s, "mfu": sum(mfus) / len(mfus) if mfus else None,
            "first_loss": recs[0]["loss"], "final_loss": result.final_loss, "wall_s": result.wall_s,
            "first_window_s": recs[0]["wall_s"], "steps": steps, "batch": batch, "seq_len": seq,
            "params_m": model.num_parameters() / 1e6,
            "peak_mem_gib": torch.cuda.max_memory_allocated(DEV) / 2**30 if DEV.type == "cuda" else None}


def train_summary(d: dict) -> tuple[str, str]:
    ok = d["final_loss"] is not None and math.isfinite(d["final_loss"]) and d["final_loss"] < d["first_loss"]
    mfu = f", MFU {d['mfu']:.1%}" if d.get("mfu") is not None else ""
    mem = f", peak {d['peak_mem_gib']:.1f} GiB" if d.get("peak_mem_gib") else ""
    return ("PASS" if ok else "FAIL"), (f"{d['params_m']:.0f}M, {d['batch']}x{d['seq_len']}, {d['steps']} steps: "
                                        f"{d['tokens_per_s']:,.0f} tok/s{mfu}; loss {d['first_loss']:.2f} -> "
                                        f"{d['final_loss']:.2f}{mem}")


def train_eager():
    d = run_train_loop(compile=False)
    return (*train_summary(d), d)


def train_plain_loops():
    """The same config in benchmarks/train.py's plain loop: acik's Transformer vs transformers' Llama."""
    from train import throughput

    cfg, seq, batch, _ = train_config()
    steps, repeats = (3, 1) if ARGS.quick else (10, 3)
    res = throughput(cfg, batch, seq, steps, repeats, device=DEV, bf16_autocast=True)
    return "INFO", (f"plain loop, bf16 autocast: acik {res['acik']:,.0f} tok/s, transformers {res['hf']:,.0f} tok/s "
                    f"({res['acik'] / res['hf']:.2f}×)"), res


def part_train_compile(report) -> dict:
    return run_train_loop(compile=True)


# ------------------------------------------------------------------------------------------------
# Child processes for the torch.compile parts: a hard time cap, and a crash stays there


PARTS = {"decode-compile": part_decode_compile, "train-compile": part_train_compile}


def run_part_child(name: str) -> None:
    """Entry of `--part NAME`: run it, write its result (and progress on the way) to --part-json."""
    out = Path(ARGS.part_json)

    def report(partial: dict) -> None:
        out.write_text(json.dumps({"partial": partial}))

    report({"stage": "started"})
    result = PARTS[name](report)
    out.write_text(json.dumps({"result": result}))


def child_part(section: str, name: str, part: str, cap: float, summarize):
    budget = min(cap, remaining() - 5)
    if budget < 30:
        return skip(section, name, f"no time left in the {ARGS.budget:.0f} s budget")

    def go():
        js = TMP / f"{part}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--part-json", str(js),
               "--device", ARGS.device, "--out", str(TMP / "child"), "--budget", str(budget)]
        cmd += ["--quick"] if ARGS.quick else []
        cmd += ["--threads", str(ARGS.threads)] if ARGS.threads else []
        t0 = time.perf_counter()
        rc, _, err = run_child(cmd, budget)
        got = json.loads(js.read_text()) if js.exists() else {}
        if rc is None:
            return "SKIP", f"over the {budget:.0f} s cap; progress: {got.get('partial')}", {"stderr_tail": err[-4000:]}
        if rc != 0 or "result" not in got:
            return "FAIL", f"child exit {rc}: {last_line(err)}", {"stderr_tail": err[-4000:]}
        status, numbers = summarize(got["result"])
        return status, f"{numbers} (child {time.perf_counter() - t0:.0f} s)", got["result"]

    return check(section, name, go)


# ------------------------------------------------------------------------------------------------
# 6. Distributed (torchrun, one process: two ranks cannot share one GPU under NCCL)

DRIVER = r'''
"""torchrun driver: `acik train` as is, then with the FSDP2 / DDP wrapper forced on this one process."""
import importlib.util
import json
import os
import sys
import traceback

import torch.distributed as dist

from acik.train import distributed as D, loop as L, pretrain as P

recipe, text, out_root, device, modes = sys.argv[1:6]
seen = {}


class Forced(D.Dist):  # world size 1 normally means "no wrapper"; this check wants the wrapper
    @property
    def enabled(self):
        return True


def forced_setup(dev="auto"):
    d = D.setup(dev)
    if not dist.is_initialized():
        kw = {"device_id": d.device} if d.device.type == "cuda" else {}
        dist.init_process_group(backend="nccl" if d.device.type == "cuda" else "gloo", **kw)
    from torch.distributed.device_mesh import init_device_mesh
    seen["backend"] = dist.get_backend()
    return Forced(d.rank, d.world_size, d.local_rank, d.device, init_device_mesh(d.device.type, (d.world_size,)))


original_wrap = L.wrap


def recording_wrap(model, d, parallel, ac=False):
    wrapped = original_wrap(model, d, parallel, ac)
    seen["wrapped_as"] = type(wrapped).__name__
    return wrapped


def train_once(mode):
    P.setup = D.setup if mode == "plain" else forced_setup
    overrides = ["parallel=" + ("fsdp" if mode == "plain" else mode), "device=" + device]
    out = os.path.join(out_root, mode)
    try:
        from acik.cli import build_parser, main
        build_parser()
    except ImportError as e:  # a stage module's dependency is missing on this machine
        from acik.recipe import load_recipe
        from acik.train.loop import TrainSettings
        P.pretrain(load_recipe(TrainSettings, recipe, overrides, data=text, progress=False), out)
        return 0, f"pretrain() (CLI unavailable: {e})"
    argv = ["train", "--recipe", recipe, "--data", text, "--out", out, "--quiet"]
    for o in overrides:
        argv += ["--set", o]
    return main(argv), "acik train (CLI)"


L.wrap = recording_wrap
if importlib.util.find_spec("matplotlib") is None:  # the report's loss curve only
    import acik.train.report as R
    R.plot_loss = lambda records, out: None
results = {}
for mode in modes.split(","):
    seen.clear()
    try:
        rc, via = train_once(mode)
        results[mode] = {"rc": rc, "via": via, **seen}
    except Exception as e:
        traceback.print_exc()
        results[mode] = {"rc": f"{type(e).__name__}: {e}"[:300], **seen}
        if dist.is_initialized():
            dist.destroy_process_group()
print("DRIVER_RESULT " + json.dumps(results), flush=True)
'''


def dist_recipe() -> dict:
    return dict(model="tiny", model_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                            "num_attention_heads": 4, "num_key_value_heads": 2},
                seq_len=64, batch_size=8, max_steps=5, warmup_steps=2, log_every=1, eval_every=0, eval_batches=1,
                checkpoint_every=3, keep_checkpoints=2)


def dist_torchrun():
    from acik.train.report import read_metrics

    root = TMP / "dist"
    root.mkdir(exist_ok=True)
    recipe = root / "recipe.yaml"
    recipe.write_text(json.dumps(dist_recipe()))  # JSON is YAML
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", str(driver),
           str(recipe), str(corpus()), str(root), DEV.type, "plain,fsdp,ddp"]
    timeout = min(120.0, max(remaining() - 5, 30.0))
    rc, out, err = run_child(cmd, timeout, ACIK_DEBUG="1", OMP_NUM_THREADS=str(ARGS.threads or 1))
    line = next((ln for ln in out.splitlines() if ln.startswith("DRIVER_RESULT ")), None)
    if rc != 0 or line is None:
        why = f"over {timeout:.0f} s" if rc is None else f"exit {rc}"
        return "FAIL", f"torchrun {why}: {last_line(err)}", {"stderr_tail": err[-4000:], "stdout_tail": out[-2000:]}
    results = json.loads(line[len("DRIVER_RESULT "):])
    parts, status = [], "PASS"
    for mode, r in results.items():
        recs = [x for x in read_metrics(root / mode / "metrics.jsonl") if x.get("kind") == "train"]
        r["final_loss"] = recs[-1]["loss"] if recs else None
        ok = r["rc"] == 0 and r["final_loss"] is not None and math.isfinite(r["final_loss"])
        status = worst(status, "PASS" if ok else "FAIL")
        parts.append(f"{mode}: rc {r['rc']}, {r.get('backend', 'no process group')}, "
                     f"{r.get('wrapped_as', '?')}, loss {fmt(r['final_loss'], '.4f')}")
    return status, "; ".join(parts), results


def dist_resume():
    """The forced-FSDP run's step-3 checkpoint, resumed in this (non-distributed) process, ends where it did."""
    from safetensors.torch import load_file

    from acik.recipe import load_recipe
    from acik.train.loop import TrainSettings
    from acik.train.pretrain import pretrain

    tolerate_missing_matplotlib()
    run = TMP / "dist" / "fsdp"
    ckpt = run / "checkpoints" / "step_00000003"
    if not ckpt.is_dir():
        return "SKIP", "no FSDP checkpoint (the torchrun check failed)", {}
    before = load_file(str(run / "model" / "model.safetensors"))
    s = load_recipe(TrainSettings, TMP / "dist" / "recipe.yaml", [f"device={DEV.type}"], data=str(corpus()),
                    progress=False)
    result = pretrain(s, run, resume=str(ckpt))
    after = load_file(str(run / "model" / "model.safetensors"))
    diff = max((after[k].float() - before[k].float()).abs().max().item() for k in before)
    ok = result.step == 5 and result.final_loss is not None and math.isfinite(result.final_loss) and diff <= 5e-3
    return ("PASS" if ok else "WARN"), (f"resumed step 3 -> {result.step} in one plain process; final weights "
                                        f"maxΔ vs the FSDP run {diff:.1e}; loss {result.final_loss:.3f}"), {
        "max_abs_weight_diff": diff, "final_loss": result.final_loss}


def section_distributed() -> None:
    check("6 distributed", "torchrun: plain, FSDP2, DDP", dist_torchrun)
    check("6 distributed", "resume FSDP checkpoint, 1 process", dist_resume)


# ------------------------------------------------------------------------------------------------
# 7. Quantization


def quant_config():
    import transformers as tf

    return tf.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          tie_word_embeddings=False)


QUANT_METHODS = ("int8", "w8a8", "int4", "nf4", "mxfp4")


def quant_method(method: str):
    """Quantized at load on DEV: its logits against the same quantization on the CPU (the kernels differ,
    the codes do not), then a one-token forward (the decode shape), generation and a save/load round trip,
    each tried on its own. The error against the unquantized model is information only (this tiny random
    model amplifies it)."""
    import acik

    path, _ = hf_dir("llama-quant", quant_config)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cpu = acik.load(path, device="cpu", dtype="bfloat16", quantize=method).model(ids)
        cpu_dense = acik.load(path, device="cpu", dtype="bfloat16").model(ids)
        ids = ids.to(DEV)
        ref = acik.load(path, device=str(DEV), dtype="bfloat16").model(ids)
        llm = acik.load(path, device=str(DEV), dtype="bfloat16", quantize=method)
        got = llm.model(ids)
    s, vs_cpu = stats_logits(got, ref), stats_logits(got, cpu)
    # bf16 logits differ between CPU and CUDA kernels even unquantized; that difference sets the bar.
    dense_gap = stats_logits(ref, cpu_dense)["rel"]
    failed = []

    def attempt(label, fn):
        try:
            return fn()
        except Exception as e:  # one sub-step failing is information; the others still run
            failed.append(f"{label}: {type(e).__name__}: {_short(e, 100)}")
            return None

    def one_token():
        with torch.no_grad():
            return llm.model(ids[:1, :1])

    def generate():
        try:
            return llm.generate(ids[0, :8].tolist(), max_new_tokens=4, temperature=0, ignore_eos=True)
        finally:
            llm.engine().close()

    def round_trip():
        llm.save(TMP / "quant" / method)
        with torch.no_grad():
            back = acik.load(TMP / "quant" / method, device=str(DEV), dtype="bfloat16").model(ids)
        return (back.float() - got.float()).abs().max().item()

    attempt("1-token forward", one_token)
    attempt("generate", generate)
    rt = attempt("save/load", round_trip)
    ok = vs_cpu["rel"] <= max(2e-2, 2 * dense_gap) and not failed and rt == 0
    numbers = (f"vs CPU quantized: rel ‖Δ‖ {vs_cpu['rel']:.1e} (unquantized CPU vs CUDA: {dense_gap:.1e}); "
               f"vs unquantized: rel ‖Δ‖ {s['rel']:.2f}, argmax {s['argmax_agree']:.0%}; "
               + ("; ".join(failed) if failed else "1-token forward, generate ran") +
               (f"; save/load maxΔ {rt:.1e}" if rt is not None else ""))
    return ("PASS" if ok else "WARN"), numbers, {"vs_unquantized": s, "vs_cpu": vs_cpu, "dense_cpu_vs_cuda": dense_gap,
                                                 "round_trip_max_abs": rt, "failed": failed}


def section_quant() -> None:
    for m in QUANT_METHODS:
        check("7 quantization", m, quant_method, m)


# ------------------------------------------------------------------------------------------------
# 8. Fine-tuning


def chat_records(n: int = 40) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "You add."},
                          {"role": "user", "content": f"{i % 7}+{i % 5}?"},
                          {"role": "assistant", "content": f"{i % 7 + i % 5}"}]} for i in range(n)]


def finetune_base() -> tuple[Path, Path]:
    import transformers as tf

    from acik.tokenizer import save_byte_tokenizer

    cfg = lambda: tf.LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128,  # noqa: E731
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=256, tie_word_embeddings=False)
    path, _ = hf_dir("llama-ft", cfg)
    save_byte_tokenizer(path)
    data = TMP / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_records()))
    return path, data


def finetune_method(method: str):
    import acik

    tolerate_missing_matplotlib()
    base, data = finetune_base()
    run = TMP / f"ft-{method}"
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEV)
    acik.finetune(base, data, run, method=method, max_steps=4 if ARGS.quick else 10, device=DEV.type, batch_size=4,
                  max_seq_len=128, lr=1e-2, warmup_steps=2, eval_every=0, eval_batches=2, log_every=2,
                  progress=False, seed=1)
    summary = json.loads((run / "summary.json").read_text())
    loss = summary["final_loss"]
    ok = loss is not None and math.isfinite(loss)
    numbers = (f"{summary['steps']} steps, loss {fmt(loss)}, val {fmt(summary['val_loss'])}, peak memory "
               f"{summary['peak_memory_bytes'] / 2**20:.0f} MiB, {summary['tokens_per_s']:,.0f} tok/s")
    if method == "lora":  # the adapter on the GPU in peft + transformers vs acik
        import peft
        import transformers as tf

        ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0)).to(DEV)
        with exact_fp32(), torch.no_grad():
            hf = tf.AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager").to(DEV).eval()
            theirs = peft.PeftModel.from_pretrained(hf, run / "adapter").eval()(ids).logits
            ours = acik.load(base, device=str(DEV), dtype="float32", adapter=run).model(ids)
        d = (ours.float() - theirs.float()).abs().max().item()
        summary["peft_max_abs"] = d
        ok = ok and d <= 1e-4
        numbers += f"; adapter logits vs peft maxΔ {d:.1e}"
    return ("PASS" if ok else "FAIL"), numbers, summary


def section_finetune() -> None:
    for m in ("lora", "qlora"):
        check("8 fine-tuning", m, finetune_method, m)


# ------------------------------------------------------------------------------------------------


def main() -> None:
    global ARGS, DEV, TMP
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few steps (a CPU shake-out)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--budget", type=float, default=225.0,
                    help="seconds for the whole run; the compile parts get what is left (default 225)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile parts")
    ap.add_argument("--sections", default="1,2,3,4,5,6,7,8", help="which sections to run (default: all)")
    ap.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # child process entry
    ap.add_argument("--part-json", help=argparse.SUPPRESS)
    ARGS = ap.parse_args()
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    DEV = torch.device(ARGS.device)
    TMP = Path(tempfile.mkdtemp(prefix="acik-gpu-check-"))
    try:
        if ARGS.part:
            run_part_child(ARGS.part)
            return
        print(f"acik GPU check on {DEV}, budget {ARGS.budget:.0f} s{' (quick)' if ARGS.quick else ''}", flush=True)
        # A hang (say, a stuck collective) must not eat the device time: dump every thread's stack and exit.
        faulthandler.dump_traceback_later(ARGS.budget + 60, exit=True)
        wanted = set(ARGS.sections.split(","))
        check("1 environment", "versions, GPU", env_check)  # always: it says what the rest ran on
        if "2" in wanted:
            section_parity()
        if "3" in wanted:
            section_generation()
        if "4" in wanted:
            check("4 decode", "eager: acik vs transformers, 8 concurrent", decode_eager)
        if "5" in wanted:
            check("5 training", "acik loop, eager", train_eager)
            check("5 training", "plain loops: acik vs transformers", train_plain_loops)
        if "6" in wanted:
            section_distributed()
        if "7" in wanted:
            section_quant()
        if "8" in wanted:
            section_finetune()
        # The compile parts last, in child processes capped by what is left of the budget.
        if "5" in wanted:
            if ARGS.no_compile:
                skip("5 training", "acik loop, compile=True", "--no-compile")
            else:
                child_part("5 training", "acik loop, compile=True", "train-compile", 80, train_summary)
        if "4" in wanted:
            if ARGS.no_compile:
                skip("4 decode", "engine compile=True", "--no-compile")
            else:
                child_part("4 decode", "engine compile=True", "decode-compile", 150, lambda d: (
                    "INFO", f"first call {d['first_call_s']:.0f} s; batch 1 {d['tok_s']:.0f} tok/s, 8 concurrent "
                            f"{d['concurrent8_tok_s']:.0f} tok/s"))
        counts = {s: sum(r["status"] == s for r in RESULTS) for s in ("PASS", "WARN", "FAIL", "SKIP", "INFO")}
        print(f"\n## acik GPU check: {DEV}, {time.perf_counter() - START:.0f} s; "
              + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + "\n", flush=True)
        print(table(), flush=True)
        save()
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
