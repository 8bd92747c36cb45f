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


__all__ = ["__version__", "load", "load_tokenizer"]
