from acik.model.transformer import Transformer

__all__ = ["Transformer"]
