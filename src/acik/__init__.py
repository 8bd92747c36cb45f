"""acik: a fully open LLM stack. `acik.load(dir)` is the front door."""

from acik.version import __version__


def load(model, **kwargs):
    """Load a model: a Hugging Face directory, a .gguf file, a LoRA adapter directory, a run directory or a
    built-in name such as "smollm2-135m-instruct"; see `acik.loader.load` for the options."""
    from acik.loader import load as _load

    return _load(model, **kwargs)


def load_tokenizer(model):
    """Load the tokenizer of anything `acik.load` takes, or of a tokenizer directory; see
    `acik.tokenizer.load_tokenizer`."""
    from acik.models import tokenizer_source
    from acik.tokenizer import load_tokenizer as _load_tokenizer

    return _load_tokenizer(tokenizer_source(model))


def finetune(base, data, out, **kwargs):
    """Fine-tune a model directory on your examples (LoRA by default, QLoRA, full); returns the adapter or
    model directory. See `acik.train.finetune.finetune` for the options."""
    from acik.train.finetune import finetune as _finetune

    return _finetune(base, data, out, **kwargs)


__all__ = ["__version__", "finetune", "load", "load_tokenizer"]
