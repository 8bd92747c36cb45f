"""acik: a fully open LLM stack. `acik.load(dir)` is the front door."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load a model directory (Hugging Face format); see `acik.hf.load` for the options."""
    from acik.hf import load as _load

    return _load(path, **kwargs)


def load_tokenizer(path):
    """Load the tokenizer of a model or tokenizer directory; see `acik.tokenizer.load_tokenizer`."""
    from acik.tokenizer import load_tokenizer as _load_tokenizer

    return _load_tokenizer(path)


def finetune(base, data, out, **kwargs):
    """Fine-tune a model directory on your examples (LoRA by default, QLoRA, full); returns the adapter or
    model directory. See `acik.train.finetune.finetune` for the options."""
    from acik.train.finetune import finetune as _finetune

    return _finetune(base, data, out, **kwargs)


__all__ = ["__version__", "finetune", "load", "load_tokenizer"]
