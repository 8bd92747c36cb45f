"""Main text from HTML with trafilatura: navigation, menus, footers and boilerplate are left out."""

from __future__ import annotations


def html_to_text(html: str, cfg) -> str:
    """The page's main text ('' if trafilatura finds none)."""
    import trafilatura

    text = trafilatura.extract(
        html,
        include_comments=cfg.include_comments,
        include_tables=cfg.include_tables,
        favor_precision=cfg.favor_precision,
        deduplicate=False,
        with_metadata=False,
        output_format="txt",
    )
    return text or ""
