"""Log-likelihood scoring against transformers, and the multiple-choice harness."""

import json

import pytest
import torch
import transformers as tf

import acik
from acik.eval.harness import load_task, score_multiple_choice
from acik.eval.scoring import loglikelihoods, perplexity
from hf_models import make_hf_model


class ByteTokenizer:
    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("m")
    ref = make_hf_model(tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
                        path)
    return acik.load(path, dtype="float32"), ref


def reference_loglikelihood(ref, context, continuation):
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(ref(ids).logits.float(), -1)[0]
    return sum(logprobs[len(context) - 1 + i, tok].item() for i, tok in enumerate(continuation))


def test_multiple_choice_loglikelihoods_match_transformers(tiny):
    llm, ref = tiny
    tok = ByteTokenizer()
    pairs = [(tok.encode("Question: what is 2+2?"), tok.encode(" four")),
             (tok.encode("Question: what is 2+2?"), tok.encode(" five hundred")),
             (tok.encode("x"), tok.encode(" y")),
             (tok.encode("a" * 200), tok.encode(" b"))]  # longer than the context: cut from the left
    ours = loglikelihoods(llm.model, pairs, batch_size=3)
    for (ctx, cont), (ll, _) in zip(pairs[:3], ours[:3]):
        assert abs(ll - reference_loglikelihood(ref, ctx, cont)) < 1e-4
    ctx, cont = pairs[3]
    cut = (ctx + cont)[-129:]
    assert abs(ours[3][0] - reference_loglikelihood(ref, cut[:-len(cont)], cont)) < 1e-4


def test_harness_scores_a_task_file(tiny, tmp_path):
    llm, _ = tiny
    rows = [{"query": "Q: sky colour?", "choices": ["blue", "green"], "gold": 0},
            {"context_options": ["Ann beat Bo so Ann", "Ann beat Bo so Bo"], "continuation": "won.", "gold": 0}]
    (tmp_path / "mini.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs = load_task("mini", tmp_path)
    assert docs[1]["contexts"] == rows[1]["context_options"] and docs[1]["continuations"] == [" won."] * 2
    result = score_multiple_choice(docs, ByteTokenizer(),
                                   lambda pairs: loglikelihoods(llm.model, pairs), shots=0)
    expected = [max(range(len(lls)), key=lambda i: lls[i]) == d["gold"]
                for d, lls in zip(docs, result["loglikelihoods"])]
    assert result["acc"] == sum(expected) / 2 and result["n"] == 2


def test_perplexity_matches_mean_cross_entropy(tiny):
    llm, ref = tiny
    ids = list(range(40, 140))
    nll, ppl, count = perplexity(llm.model, ids, window=50)
    assert count == 99
    x = torch.tensor([ids])
    with torch.no_grad():
        # two windows: tokens 1..50 with context from 0, tokens 51..99 with context from 50
        a = torch.nn.functional.cross_entropy(ref(x[:, :50]).logits[0], x[0, 1:51], reduction="sum")
        b = torch.nn.functional.cross_entropy(ref(x[:, 50:99]).logits[0], x[0, 51:100], reduction="sum")
    assert abs(nll - (a + b).item() / 99) < 1e-4
    assert abs(ppl - torch.exp(torch.tensor(nll)).item()) < 1e-3


def test_shared_eval_files_load(shared_data):
    for task in ("arc_easy", "boolq", "winogrande", "copa"):
        docs = load_task(task, shared_data / "eval")
        assert docs and all(0 <= d["gold"] < len(d["continuations"]) for d in docs[:50])
