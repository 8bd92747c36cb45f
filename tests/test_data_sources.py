"""Readers and HTML extraction, checked against the shared data (real pages, real WARC files)."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import lxml.html
import pytest
import zstandard

from acik.data.extract import html_to_text
from acik.data.licenses import allowed, license_terms, normalize_license, package_license
from acik.data.recipe import DataRecipe, ExtractConfig, PythonEnvSource
from acik.data.sources import plan_tasks, read_file, read_task


def shared_data() -> Path:
    root = Path(os.environ.get("ACIK_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not root.exists():
        pytest.skip(f"shared test data not found at {root} (set ACIK_SHARED_DATA)")
    return root


def norm(s: str) -> str:
    return " ".join(s.split())


@pytest.mark.parametrize("page", ["mozilla-1", "wikipedia", "wikipedia-3", "wikipedia-4"])
def test_readability_pages_keep_article_drop_navigation(page):
    d = shared_data() / "html" / "readability_test_pages" / page
    source = (d / "source.html").read_text(encoding="utf-8")
    expected = lxml.html.fromstring((d / "expected.html").read_text(encoding="utf-8"))
    text = norm(html_to_text(source, ExtractConfig()))
    # Key paragraphs: every substantial paragraph of the reader-view extraction.
    paras = [norm(p.text_content()) for p in expected.iter("p")]
    paras = [p for p in paras if len(p) >= 100]
    assert paras
    found = sum(p[:80] in text for p in paras) / len(paras)
    assert found >= 0.9, f"{page}: only {found:.0%} of the key paragraphs extracted"
    # Navigation: link and list texts inside nav/menu/footer elements that the article does not contain.
    expected_text = norm(expected.text_content())
    src = lxml.html.fromstring(source)
    nav = set()
    for el in src.xpath(
        '//nav | //*[@role="navigation"] | //footer | //*[contains(@id,"nav") or '
        'contains(@class,"navbox") or contains(@id,"footer") or contains(@class,"menu")]'
    ):
        for a in el.iter("a", "li"):
            t = norm(a.text_content())
            if len(t) >= 12 and t not in expected_text:
                nav.add(t)
    assert nav, "the page should have navigation to check"
    leaked = sorted(t for t in nav if t in text)
    assert not leaked, f"{page}: navigation text extracted: {leaked[:5]}"


def test_warc_and_arc_files_are_read():
    recipe = DataRecipe()
    seen = {}
    for path in sorted((shared_data() / "warc").iterdir()):
        seen[path.name] = list(read_file(path, "warc", "unknown", recipe))
    # Only response/resource records are documents; requests, warcinfo and revisits are not.
    assert {k: len(v) for k, v in seen.items()} == {
        "example-iana.org-chunked.warc": 1,
        "example-resource.warc.gz": 1,
        "example.arc.gz": 1,
        "example.warc": 1,
        "example.warc.gz": 1,
    }
    for name, recs in seen.items():
        rec = recs[0]
        assert "html" in rec and "error" not in rec, name
        text = html_to_text(rec["html"], ExtractConfig())
        if "iana" in name:
            assert rec["metadata"]["url"] == "http://www.iana.org/"
            assert "Internet Assigned Numbers Authority" in rec["html"]  # chunked transfer decoded
        else:
            assert rec["metadata"]["url"] == "http://example.com/"
            assert "This domain is established to be used for illustrative examples" in text


def test_jsonl_formats_parquet_and_text(tmp_path):
    rows = [{"text": f"document {i}", "url": f"http://x/{i}"} for i in range(3)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl").write_bytes(body)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    (tmp_path / "d.txt").write_text("plain text", encoding="utf-8")
    (tmp_path / "e.txt").write_bytes(b"\xff\xfe bad bytes")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p0", "p1"], "license": ["MIT", "CC-BY-4.0"]}), tmp_path / "f.parquet")
    recipe = DataRecipe()
    tasks = plan_tasks([str(tmp_path)], recipe)
    recs = [r for t in tasks for r in read_task(t, recipe)]
    by_file = {}
    for r in recs:
        by_file.setdefault(Path(r["path"]).name, []).append(r)
    assert sorted(by_file) == ["a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.txt", "e.txt", "f.parquet"]
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst"):
        assert [r["text"] for r in by_file[name]] == ["document 0", "document 1", "document 2"]
        assert by_file[name][1]["metadata"]["url"] == "http://x/1"
    assert by_file["d.txt"][0]["text"] == "plain text"
    assert "undecodable" in by_file["e.txt"][0]["error"]
    assert [(r["text"], r["license"]) for r in by_file["f.parquet"]] == [("p0", "MIT"), ("p1", "CC-BY-4.0")]
    assert len({r["id"] for r in recs}) == len(recs)


def test_python_env_reads_docstrings_without_importing():
    assert "imaplib" not in sys.modules and "numpy.polynomial.hermite" not in sys.modules
    cfg = PythonEnvSource(
        stdlib_modules=["imaplib", "json"], packages=["numpy"], max_files_per_package=30, pydoc_topics=True
    )
    recipe = DataRecipe(python_env=cfg)
    tasks = plan_tasks(["python-env"], recipe)
    recs = [r for t in tasks for r in read_task(t, recipe)]
    assert "imaplib" not in sys.modules, "reading docstrings must not import the module"
    paths = {r["path"]: r for r in recs}
    imap = paths["python-env:stdlib/imaplib.py"]
    assert imap["text"].startswith("Module imaplib\n\nIMAP4 client.")
    assert imap["license"] == "PSF-2.0" and imap["metadata"]["package"] == "python-stdlib"
    assert "class IMAP4" in imap["text"]
    assert "python-env:pydoc-topics/assert" in paths
    numpy_docs = [r for r in recs if r["source"] == "python-env:numpy"]
    import importlib.metadata as md

    assert numpy_docs[0]["path"] == "python-env:numpy/METADATA"
    assert numpy_docs[0]["metadata"]["version"] == md.version("numpy")
    assert numpy_docs[0]["license"] != "unknown"
    # Deterministic: the same environment gives the same records.
    again = [r for t in plan_tasks(["python-env"], recipe) for r in read_task(t, recipe)]
    assert again == recs


def test_licenses_normalise_match_and_terms():
    assert normalize_license("MIT License") == "MIT"
    assert normalize_license("Apache Software License") == "Apache-2.0"
    assert normalize_license(None) == "unknown"
    # PEP 639 License-Expression (torch writes a 98-character one) is kept as the SPDX expression it is.
    expr = "Apache-2.0 AND BSD-2-Clause AND BSD-3-Clause AND BSL-1.0 AND MIT AND Apache-2.0 WITH LLVM-exception"
    assert package_license({"License-Expression": expr}) == expr
    assert package_license({"License": "MIT License"}) == "MIT"
    allow = DataRecipe().licenses.allow
    assert allowed("MIT", allow) and allowed("CC-BY-SA-3.0", allow) and allowed("BSD-3-Clause", allow)
    assert not allowed("CC-BY-NC-4.0", allow) and not allowed("proprietary", allow)
    assert allowed("MIT OR proprietary", allow) and not allowed("MIT AND CC-BY-NC-4.0", allow)
    assert license_terms("CC-BY-SA-4.0") == {
        "share_alike": True,
        "non_commercial": False,
        "attribution": True,
    }
    assert license_terms("CC-BY-NC-4.0")["non_commercial"]
    assert license_terms("GPL-3.0")["share_alike"] and not license_terms("MIT")["share_alike"]
