"""Checkpoint formats. Each module here only translates a format to and from acik's `ModelConfig` and tensors
(Hugging Face config.json and safetensors, compressed-tensors, GGUF); `acik.loader` assembles an `LLM` from
what they return, so no format module imports the `LLM` class."""
