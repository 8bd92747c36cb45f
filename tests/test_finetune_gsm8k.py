"""GSM8K: LoRA fine-tuning lowers the validation loss on gsm8k/test.jsonl (slow; a tiny base made here).

The benchmark (`benchmarks/finetune.py --gsm8k-steps N`) runs the same check on a pretrained base."""

import json

import pytest
import torch

import acik
from acik.config import preset
from acik.llm import LLM
from acik.model import Transformer
from acik.tokenizer import save_byte_tokenizer
from acik.train import sft


def _val_loss(model, batches):
    total = count = 0.0
    with torch.no_grad():
        for b in batches:
            logits = model(b.input_ids, positions=b.positions, segment_ids=b.segment_ids)
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.targets.flatten(),
                                                       ignore_index=sft.IGNORE, reduction="sum").item()
            count += b.num_targets
    return total / count


@pytest.mark.slow
def test_lora_on_gsm8k_lowers_validation_loss(shared_data, tmp_path):
    cfg = preset("tiny")
    model = Transformer(cfg)
    model.init_weights(seed=0)
    LLM(model, cfg, tokenizer_dir=save_byte_tokenizer(tmp_path / "tok")).save(tmp_path / "base")
    train = tmp_path / "train.jsonl"
    train.write_text("".join((shared_data / "gsm8k" / "train.jsonl").read_text().splitlines(True)[:400]))
    test = tmp_path / "test.jsonl"
    test.write_text("".join((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines(True)[:40]))
    base = acik.load(tmp_path / "base", dtype="float32")
    val = sft.build_examples(sft.read_records(test), base.tokenizer, max_seq_len=512)
    batches = list(sft.eval_batches(val, batch_size=8, seq_len=512, packed=True, pad_id=0))
    before = _val_loss(base.model, batches)
    out = acik.finetune(tmp_path / "base", train, tmp_path / "run", val_data=test, max_steps=60, batch_size=4,
                        max_seq_len=512, lr=3e-3, warmup_steps=5, eval_every=30, progress=False,
                        data_license="MIT")
    after = _val_loss(acik.load(tmp_path / "base", dtype="float32", adapter=out).model, batches)
    vals = [json.loads(line)["val_loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "val"]
    assert after < before - 0.5, (before, after)
    assert vals[-1] == pytest.approx(after, rel=1e-4)
