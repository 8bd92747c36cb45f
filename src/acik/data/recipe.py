"""The data recipe: every step's switches and thresholds, read from YAML by `acik.recipe.load_recipe`.

Defaults are the published ones (Gopher, C4, FineWeb, MinHash 14x8); the packaged
`recipes/data_default.yaml` spells them out so a reader sees every number in one file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from acik.recipe import apply_overrides, from_dict, load_recipe


@dataclass
class PythonEnvSource:
    """The local Python environment as a corpus: docstrings parsed from source, never imported."""

    stdlib: bool = True
    # Top-level stdlib modules to read (e.g. ["json", "pathlib"]); null reads them all.
    stdlib_modules: list[str] | None = None
    # Stdlib modules skipped even when stdlib_modules is null (tests, GUI demos, private stubs).
    stdlib_exclude: list[str] = field(
        default_factory=lambda: [
            "test",
            "tests",
            "idlelib",
            "turtledemo",
            "lib2to3",
            "ensurepip",
            "site-packages",
            "__phello__",
        ]
    )
    # Installed distributions whose description and module docstrings are read.
    packages: list[str] = field(default_factory=list)
    pydoc_topics: bool = True
    # Caps keep the quickstart fast: at most this many source files per package (null: all).
    max_files_per_package: int | None = None
    files_per_task: int = 200
    # Module documents shorter than this (characters) are not emitted at all: a file with no docstrings
    # is not a document. Counted in the card as skipped files, not as input records.
    min_chars: int = 1


@dataclass
class ReadConfig:
    text_keys: list[str] = field(default_factory=lambda: ["text", "content"])
    # License given to documents whose source does not say (files, JSONL rows without a license field).
    default_license: str = "unknown"
    max_doc_chars: int = 2_000_000


@dataclass
class UnwrapConfig:
    """Join hard-wrapped lines of plain-text and markdown/reST files into one line per paragraph.

    Code blocks (fenced, indented, reST literal blocks), tables, headings and list items keep their
    lines. Off for web text (extraction already gives one paragraph per line); on in the docs recipe.
    """

    enabled: bool = False


@dataclass
class ExtractConfig:
    enabled: bool = True
    include_tables: bool = True
    include_comments: bool = False
    favor_precision: bool = False


@dataclass
class LangIdConfig:
    enabled: bool = True
    # Languages kept (ISO 639-1 codes as py3langid writes them); null keeps every language.
    keep: list[str] | None = field(default_factory=lambda: ["en"])
    min_confidence: float = 0.65
    # Restrict the classifier to these candidates (null: all 97 of py3langid's languages).
    candidates: list[str] | None = None
    # Only the first characters are classified: language is settled long before the end of a page.
    max_chars: int = 1000


@dataclass
class GopherRepetition:
    enabled: bool = True
    dup_para_frac: float = 0.3
    dup_para_char_frac: float = 0.2
    dup_line_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    # [n, max fraction of characters in the most frequent n-gram]
    top_n_grams: list[list[float]] = field(default_factory=lambda: [[2, 0.2], [3, 0.18], [4, 0.16]])
    # [n, max fraction of characters in duplicated n-grams]
    dup_n_grams: list[list[float]] = field(
        default_factory=lambda: [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.10]]
    )


@dataclass
class GopherQuality:
    enabled: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: list[str] = field(
        default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"]
    )


@dataclass
class C4:
    enabled: bool = True
    remove_citations: bool = True
    # Line filters: lines that fail are removed from the document, and counted.
    drop_lines_without_terminal_punct: bool = True
    min_words_per_line: int = 3
    max_word_length: int = 1000
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    # Document filters.
    lorem_ipsum: bool = True
    curly_bracket: bool = True
    min_sentences: int = 5


@dataclass
class FineWeb:
    enabled: bool = True
    min_line_punct_ratio: float = 0.12
    max_short_line_ratio: float = 0.67
    short_line_length: int = 30
    max_dup_line_char_ratio: float = 0.01
    max_newline_ratio: float = 0.3


@dataclass
class PIIConfig:
    enabled: bool = True
    email: bool = True
    ip: bool = True
    phone: bool = True


@dataclass
class LicenseConfig:
    enabled: bool = True
    # Glob patterns on normalised (SPDX-like) license names; case-insensitive.
    allow: list[str] = field(
        default_factory=lambda: [
            "MIT",
            "MIT-*",
            "BSD-*",
            "0BSD",
            "ISC",
            "Apache-2.0",
            "PSF-2.0",
            "Python-2.0",
            "HPND",
            "Zlib",
            "Unlicense",
            "CC0-1.0",
            "public-domain",
            "CC-BY-[0-9]*",
            "CC-BY-SA-*",
            "MPL-2.0",
            "LGPL-*",
            "GPL-*",
            "AGPL-*",
            "AFL-3.0",
            "unknown",
        ]
    )


@dataclass
class DecontaminationConfig:
    enabled: bool = True
    # JSONL files (every string value of a row is evaluation text) or plain-text files.
    eval_sets: list[str] = field(default_factory=list)
    ngram: int = 13


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    # A candidate pair found by LSH joins a cluster only if its estimated Jaccard reaches this.
    threshold: float = 0.7
    seed: int = 1
    # Larger LSH buckets are compared as a chain instead of all pairs (bounded work on spam floods).
    max_bucket_pairs: int = 64


@dataclass
class TokenizeConfig:
    enabled: bool = True
    val_fraction: float = 0.01
    shard_tokens: int = 100_000_000
    batch_documents: int = 512


@dataclass
class DataRecipe:
    seed: int = 0
    inputs: list[str] = field(default_factory=list)
    python_env: PythonEnvSource = field(default_factory=PythonEnvSource)
    read: ReadConfig = field(default_factory=ReadConfig)
    unwrap: UnwrapConfig = field(default_factory=UnwrapConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    gopher_repetition: GopherRepetition = field(default_factory=GopherRepetition)
    gopher_quality: GopherQuality = field(default_factory=GopherQuality)
    c4: C4 = field(default_factory=C4)
    fineweb: FineWeb = field(default_factory=FineWeb)
    pii: PIIConfig = field(default_factory=PIIConfig)
    licenses: LicenseConfig = field(default_factory=LicenseConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    # Write dropped documents (with their rule) to dropped/ for inspection.
    write_dropped: bool = False
    documents_per_file: int = 50_000
    examples_per_rule: int = 3


DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "data_default.yaml"
DOCS_RECIPE = DEFAULT_RECIPE.with_name("data_docs.yaml")


def load_data_recipe(
    recipe: str | Path | DataRecipe | None = None, overrides: list[str] | None = None, **flags
) -> DataRecipe:
    """A DataRecipe from None (packaged default), a YAML path or an instance, then `key=value` overrides."""
    if isinstance(recipe, DataRecipe):
        if not overrides and not flags:
            return recipe
        data = apply_overrides(dataclasses.asdict(recipe), overrides)
        data.update({k: v for k, v in flags.items() if v is not None})
        return from_dict(DataRecipe, data, where="settings")
    return load_recipe(DataRecipe, recipe or DEFAULT_RECIPE, overrides, **flags)
