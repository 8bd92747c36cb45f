"""`acik generate`, `acik chat` and `acik pull` (never touching the network)."""

import io
import json

import pytest
import torch

from acik.cli import main
from acik.config import preset
from acik.engine.cli import chat_loop
from acik.llm import LLM
from acik.models import resolve
from acik.tokenizer import save_byte_tokenizer


@pytest.fixture(scope="module")
def model_dir(tiny_chat_model_dir):
    return tiny_chat_model_dir


def test_generate_command_is_greedy_and_reproducible(model_dir, capsys):
    argv = ["generate", str(model_dir), "Hello", "--max-new-tokens", "8", "--temperature", "0"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    import acik

    llm = acik.load(model_dir)
    assert first == llm.generate("Hello", max_new_tokens=8, temperature=0) + "\n"


def test_generate_command_reads_a_recipe(model_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_new_tokens: 3\ntemperature: 0.0\n")
    assert main(["generate", str(model_dir), "Hi", "--recipe", str(recipe), "-v"]) == 0
    assert "new tokens" in capsys.readouterr().err
    recipe.write_text("max_new_tokenz: 3\n")
    assert main(["generate", str(model_dir), "Hi", "--recipe", str(recipe)]) == 2
    assert "max_new_tokenz" in capsys.readouterr().err


def test_compile_flag_reaches_the_engine(model_dir, monkeypatch, capsys):
    import acik.engine.scheduler as scheduler

    seen = []
    monkeypatch.setattr(scheduler.torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "2", "--compile"]) == 0
    assert seen == [{"dynamic": True}]


def test_generate_optimizes_unless_told_not_to(model_dir, monkeypatch, capsys):
    """`acik generate` runs the model optimized for inference (the greedy test above checks the output equals the
    plain model's); `--no-optimize` keeps it as loaded."""
    calls = []
    original = LLM.optimize
    monkeypatch.setattr(LLM, "optimize", lambda self, **kw: calls.append(kw) or original(self, **kw))
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "2"]) == 0
    assert calls == [{}]
    assert main(["generate", str(model_dir), "Hi", "--max-new-tokens", "2", "--no-optimize"]) == 0
    assert calls == [{}]


def test_generate_command_bad_input(model_dir, capsys):
    assert main(["generate", str(model_dir), "Hi", "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["generate", str(model_dir / "nope"), "Hi"]) == 2
    assert "no such model directory" in capsys.readouterr().err


def test_pull_offline_fails_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ACIK_HOME", str(tmp_path))
    assert main(["pull", "someone/some-model"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "someone/some-model" in err
    assert main(["pull", "not-a-repo-id"]) == 2


def test_chat_finds_a_pulled_model(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ACIK_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="acik pull owner/name"):
        resolve("owner/name")
    target = tmp_path / "models" / "owner" / "name"
    target.parent.mkdir(parents=True)
    target.symlink_to(model_dir)
    assert resolve("owner/name").path == target


def test_chat_loop(model_dir, tmp_path):
    import acik

    llm = acik.load(model_dir)
    save = tmp_path / "chat.json"
    script = "\n".join([
        "Hello there", "second line", "",  # a two-line message
        "/system Be brief.",
        "Hi", "",
        f"/save {save}",
        "/reset",
        "/bogus",
    ]) + "\n"
    out = io.StringIO()
    chat_loop(llm, dict(max_new_tokens=6, temperature=0), inp=io.StringIO(script), out=out)
    text = out.getvalue()
    assert text.count("tokens/s") == 2
    assert "system prompt set" in text and "conversation reset" in text and "unknown command /bogus" in text
    saved = json.loads(save.read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]
    assert saved[0]["content"] == "Be brief." and saved[1]["content"] == "Hi"
    # The reply is what the engine makes of the same conversation.
    expected = llm.chat(saved[:2], max_new_tokens=6, temperature=0)
    assert saved[2]["content"] == expected


def test_chat_stream_equals_chat(model_dir):
    import acik

    llm = acik.load(model_dir)
    msgs = [{"role": "user", "content": "Hi"}]
    whole = llm.chat(msgs, max_new_tokens=10, temperature=0)
    assert "".join(llm.chat(msgs, max_new_tokens=10, temperature=0, stream=True)) == whole


HARMONY_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'assistant' %}<|start|>assistant<|channel|>final<|message|>"
    "{{ m.content }}<|end|>{% else %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)
HARMONY_TOKENS = ["<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>", "<|call|>"]


class ScriptedModel(torch.nn.Module):
    """Says `script` (token ids) whatever the prompt: logits favour script[i] at the i-th new position."""

    def __init__(self, script, vocab, prompt_len):
        super().__init__()
        self.script, self.vocab, self.prompt_len = script, vocab, prompt_len
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids, positions, cache=None, last_only=False):
        pos = positions[:, -1:] if last_only else positions
        logits = torch.zeros(*pos.shape, self.vocab)
        for b in range(pos.shape[0]):
            for t in range(pos.shape[1]):
                i = int(pos[b, t]) + 1 - self.prompt_len
                logits[b, t, self.script[min(max(i, 0), len(self.script) - 1)]] = 100.0
        return logits


def test_chat_shows_gpt_oss_reasoning_apart(tmp_path):
    save_byte_tokenizer(tmp_path)
    tok_json = json.loads((tmp_path / "tokenizer.json").read_text())
    for i, t in enumerate(HARMONY_TOKENS):
        tok_json["added_tokens"].append({"id": 260 + i, "content": t, "single_word": False, "lstrip": False,
                                         "rstrip": False, "normalized": False, "special": True})
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok_json))
    cfg_json = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg_json.update(chat_template=HARMONY_TEMPLATE, eos_token="<|return|>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg_json))
    from acik.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path)
    assert tok.is_harmony
    said = ("<|channel|>analysis<|message|>Let me think.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Hi!<|return|>")
    script = tok.encode(said, add_special_tokens=False)
    messages = [{"role": "user", "content": "Hello"}]
    prompt_len = len(tok.apply_chat_template(messages, tokenize=True))
    cfg = preset("tiny", vocab_size=266)
    llm = LLM(ScriptedModel(script, 266, prompt_len), cfg, tokenizer_dir=tmp_path)
    assert llm.chat(messages, max_new_tokens=64) == "Hi!"
    assert "".join(llm.chat(messages, max_new_tokens=64, stream=True)) == "Hi!"
    out = io.StringIO()
    chat_loop(llm, dict(max_new_tokens=64), inp=io.StringIO("Hello\n\n/save " + str(tmp_path / "c.json") + "\n"),
              out=out)
    text = out.getvalue()
    assert "[thinking] Let me think." in text and "[answer] Hi!" in text
    saved = json.loads((tmp_path / "c.json").read_text())["messages"]
    assert saved[-1] == {"role": "assistant", "content": "Hi!", "thinking": "Let me think."}


def test_chat_loop_applies_a_policy(model_dir, tmp_path):
    import acik
    from acik.serve.policy import Policy

    path = tmp_path / "policy.yaml"
    # Input: one blocked word. Output: any character is blocked, so every reply is stopped at once.
    path.write_text('input:\n  blocked: ["forbidden"]\n  refusal: "Not here."\noutput:\n  blocked: ["[\\\\s\\\\S]"]\n')
    llm = acik.load(model_dir)
    save = tmp_path / "chat.json"
    script = f"a forbidden question\n\nHi\n\n/save {save}\n"
    out = io.StringIO()
    chat_loop(llm, dict(max_new_tokens=6, temperature=0), inp=io.StringIO(script), out=out,
              policy=Policy.load(path))
    text = out.getvalue()
    assert "Not here." in text and text.count("tokens/s") == 1  # the refused message never reached the model
    assert "(stopped by the policy)" in text
    saved = json.loads(save.read_text())["messages"]
    assert [m["content"] for m in saved] == ["Hi", ""]  # history keeps what was shown
