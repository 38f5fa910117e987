"""HTML parser: main content only, page chrome and scripts dropped, heading paths, title."""

from __future__ import annotations

import pytest

from ingest.parsers import html, parse_document
from ingest.types import UnsupportedDocument


def test_chrome_scripts_and_styles_are_dropped(load) -> None:
    doc = parse_document(load("page.html"), "page.html")
    assert doc.mime_type == "text/html"
    text = doc.text
    for absent in [
        "trackingScriptSecret", "display: none", "SITE BANNER TEXT", "Home navigation link",
        "Breadcrumb trail text", "Related articles sidebar", "Subscribe to newsletter",
        "Copyright footer text", "Enable JavaScript notice",
    ]:  # fmt: skip
        assert absent not in text


def test_blocks_and_heading_paths(load) -> None:
    doc = html.parse(load("page.html"))
    assert doc.title == "Deploying Kb"
    paths = {b.text: b.heading_path for b in doc.blocks}
    assert paths["Kb runs as a single container."] == ("Deployment guide",)
    assert paths["Docker 24 or newer"] == ("Deployment guide", "Requirements")
    assert paths["8 GB with GPU models"] == ("Deployment guide", "Requirements")
    assert paths["8080 | HTTP API"] == ("Deployment guide", "Requirements", "Ports")
    assert paths["docker run -p 8080:8080 kb\n  --workers 2"] == ("Deployment guide", "Requirements", "Ports")
    assert paths["Back up the data volume first."] == ("Deployment guide", "Upgrades")
    assert paths["Loose text inside a div continues here."] == ("Deployment guide", "Upgrades")
    assert "4 GB of memory" in paths  # the nested list is not glued onto its parent item


def test_title_falls_back_to_first_h1_and_body_without_main() -> None:
    markup = (
        b"<html><body><h1>Release notes</h1><p>Version 2 adds search.</p><footer>foot</footer></body></html>"
    )
    doc = parse_document(markup)
    assert doc.title == "Release notes"
    assert [b.text for b in doc.blocks] == ["Release notes", "Version 2 adds search."]


def test_header_inside_article_is_kept() -> None:
    markup = "<article><header><h1>Post title</h1></header><p>Body text.</p></article>"
    doc = html.parse_html_text(markup)
    assert [b.text for b in doc.blocks] == ["Post title", "Body text."]


def test_meta_charset_is_honoured() -> None:
    markup = '<html><head><meta charset="windows-1252"></head><body><p>Café “déjà vu” – 5 €</p></body></html>'
    doc = parse_document(markup.encode("cp1252"))
    assert doc.blocks[0].text == "Café “déjà vu” – 5 €"


def test_page_with_only_chrome_has_no_text() -> None:
    with pytest.raises(UnsupportedDocument, match="no text found"):
        parse_document(b"<html><body><nav>Home</nav><script>x=1</script></body></html>")
