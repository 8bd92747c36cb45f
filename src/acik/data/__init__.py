"""The data stage: raw documents in; filtered, deduplicated, tokenized corpus with a data card out.

`acik.data.run(inputs, out_dir, recipe=None, tokenizer=None, executor="local", workers=None)`
runs it (recipe None: each file by its kind, `docs` or `web`; see `acik.data.docs`);
`acik.data.shards.load_tokens(dir, split)` is what pretraining reads.
"""

from __future__ import annotations


def run(
    inputs,
    out_dir,
    recipe=None,
    tokenizer=None,
    executor: str = "local",
    workers: int | None = None,
    **kwargs,
) -> dict:
    """Run the data stage; see `acik.data.runner.run`."""
    from acik.data.runner import run as _run

    return _run(
        inputs, out_dir, recipe=recipe, tokenizer=tokenizer, executor=executor, workers=workers, **kwargs
    )


def tokenize(data_dir, tokenizer=None, overrides: list[str] | None = None) -> dict:
    """Re-tokenize a data directory's kept documents (tokenizer None: the one it has; `overrides` such as
    "tokenize.val_fraction=0.1"); see `acik.data.runner.retokenize`."""
    from acik.data.runner import retokenize

    return retokenize(data_dir, tokenizer, overrides=overrides)


__all__ = ["run", "tokenize"]
