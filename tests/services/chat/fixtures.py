"""Documents for the chat tests: a two-page PDF manual (pages matter for citations) and short notes."""

from __future__ import annotations

from fastapi.testclient import TestClient

PAGES = {
    1: "Warranty. The Lumo desk lamp has a warranty of two years from the date of purchase. "
    "The warranty covers defects in the LED module and the switch, not damage from falls.",
    2: "Returns. You can return the Lumo desk lamp within thirty days for a full refund. "
    "Refunds are paid back to the original card within five working days after we receive the lamp.",
}
NOTES = [
    ("shipping", "Orders ship from the Rotterdam warehouse every weekday at 3 pm; delivery takes two days."),
    ("payroll", "Salaries are paid on the 25th of each month by bank transfer."),
]


def manual_pdf() -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Lumo lamp manual")
    nl = {"new_x": "LMARGIN", "new_y": "NEXT"}
    for page in sorted(PAGES):
        pdf.add_page()
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, PAGES[page], **nl)
    return bytes(pdf.output())


def load_documents(client: TestClient, collection: str = "shop") -> None:
    assert client.post("/v1/collections", json={"name": collection}).status_code == 201
    r = client.post(
        f"/v1/collections/{collection}/documents",
        files={"file": ("lumo-manual.pdf", manual_pdf(), "application/pdf")},
        data={"source_id": "lumo-manual"},
    )
    assert r.status_code == 201, r.text
    for source_id, text in NOTES:
        r = client.post(
            f"/v1/collections/{collection}/documents", json={"text": text, "source_id": source_id}
        )
        assert r.status_code == 201, r.text


def sse_events(raw: str) -> list[tuple[str, str]]:
    """Parse an SSE body into (event, data) pairs, checking the framing on the way."""
    events = []
    assert raw.endswith("\n\n"), "an SSE body ends with a blank line"
    for block in raw.strip("\n").split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][7:], lines[1][6:]))
    return events
