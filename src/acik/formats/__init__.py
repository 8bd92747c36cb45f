"""Checkpoint formats. Each module here only translates a format to and from acik's `ModelConfig` and tensors
(Hugging Face config.json and safetensors, compressed-tensors, GGUF); `acik.loader` assembles an `LLM` from
what they return, so no format module imports the `LLM` class."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file and the fix."""


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or used as it is; the message names the file or input and the fix."""
