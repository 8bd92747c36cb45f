"""Offline language identification with py3langid, whose model ships inside the PyPI package.

Codes are ISO 639-1 as py3langid writes them ("en", "tr", "zh"). Indonesian and Malay are close
enough that 300-character snippets are sometimes confused; a recipe that knows its corpus can
restrict the candidates (`langid.candidates`).
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def _identifier(candidates: tuple[str, ...] | None):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if candidates:
        try:
            ident.set_languages(list(candidates))
        except ValueError as e:
            raise ValueError(
                f"langid.candidates: {e}; py3langid knows {sorted(set(ident.nb_classes))}"
            ) from None
    return ident


def classify(text: str, candidates: list[str] | None = None, max_chars: int = 3000) -> tuple[str, float]:
    """(language code, probability) for the first `max_chars` characters of `text`."""
    snippet = " ".join(text[:max_chars].split())
    if not snippet:
        return "und", 0.0
    lang, prob = _identifier(tuple(candidates) if candidates else None).classify(snippet)
    return str(lang), float(prob)


def check(text: str, cfg) -> tuple[str | None, str, float]:
    """(rule that drops it or None, language, confidence)."""
    lang, prob = classify(text, cfg.candidates, cfg.max_chars)
    if cfg.keep is not None:
        if lang not in cfg.keep:
            return "langid.language", lang, prob
        if prob < cfg.min_confidence:
            return "langid.min_confidence", lang, prob
    return None, lang, prob
