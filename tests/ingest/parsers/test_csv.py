"""CSV parser: sniffed dialect, header: value rows, quoting, truncation."""

from __future__ import annotations

import pytest

from ingest.parsers import csv as csv_parser
from ingest.parsers import parse_document
from ingest.types import UnsupportedDocument


def test_rows_become_header_value_blocks(load) -> None:
    doc = parse_document(load("people.csv"), "people.csv")
    assert doc.mime_type == "text/csv"
    assert [(b.text, b.page, b.heading_path) for b in doc.blocks] == [
        ("name: Ada; city: London; notes: likes tea, and cake", None, ()),
        ("name: Linus; city: Helsinki", None, ()),
        ("name: Grace; city: New York; notes: admiral", None, ()),
    ]
    assert doc.metadata["columns"] == ["name", "city", "notes"]


def test_semicolon_and_tab_dialects_are_sniffed() -> None:
    semicolon = "Produkt;Preis;Menge\nÄpfel;1,20;3\nBirnen;2,50;4\nKirschen;4,00;1\n".encode("cp1252")
    assert parse_document(semicolon).blocks[0].text == "Produkt: Äpfel; Preis: 1,20; Menge: 3"
    tabs = b"host\tport\nalpha\t80\nbeta\t443\ngamma\t22\n"
    assert [b.text for b in parse_document(tabs, "hosts.tsv").blocks][-1] == "host: gamma; port: 22"


def test_quoted_newlines_stay_in_one_row() -> None:
    doc = csv_parser.parse(b'id,comment\n1,"first line\nsecond line"\n2,plain\n')
    assert [b.text for b in doc.blocks] == ["id: 1; comment: first line second line", "id: 2; comment: plain"]


def test_row_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_parser, "MAX_ROWS", 5)
    doc = csv_parser.parse(("n,square\n" + "".join(f"{i},{i * i}\n" for i in range(20))).encode())
    assert len(doc.blocks) == 5 and doc.metadata["truncated"] is True


def test_csv_with_only_separators_is_refused() -> None:
    with pytest.raises(UnsupportedDocument, match="no text found"):
        csv_parser.parse(b",,,\n,,,\n")
