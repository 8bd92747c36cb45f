"""Evaluation: perplexity / bits-per-byte and log-likelihood multiple choice, locally or over an API."""

from acik.eval.harness import evaluate
from acik.eval.scoring import loglikelihoods

__all__ = ["evaluate", "loglikelihoods"]
