"""Builders for the parser test documents: every fixture is generated, none is checked in.

Generating keeps the repository free of binary blobs and makes each fixture's content
visible next to the assertions that depend on it.
"""

from __future__ import annotations

import io
from email.message import EmailMessage
from pathlib import Path

PAGE3_SENTENCE = "The zebra protocol requires three independent signatures before any production release."
HEADER_TEXT = "CONFIDENTIAL RUNNING HEADER"
FOOTER_TEXT = "Page footer boilerplate"
LOREM = (
    "Operational reviews cover capacity planning, incident follow-up and the budget for the next "
    "quarter, and every team lead is expected to read the summary before the meeting starts. "
)


def pdf_bytes(pages: int = 3, title: str | None = "Quarterly Operations Report") -> bytes:
    """A text PDF: a heading and wrapped paragraphs per page; page 3 holds PAGE3_SENTENCE mid-paragraph."""
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_author("Ops Team")
    nl = {"new_x": "LMARGIN", "new_y": "NEXT"}
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.cell(0, 10, f"Section {number}", **nl)
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, f"Page {number} opens here. " + LOREM * 3, **nl)
        pdf.ln(5)
        if number == 3:
            pdf.multi_cell(0, 6, LOREM + PAGE3_SENTENCE + " " + LOREM, **nl)
            pdf.ln(5)
            # a word hyphenated across two lines, as typeset PDFs do
            pdf.cell(0, 6, "Before shipping, the release manager checks the docu-", **nl)
            pdf.cell(0, 6, "mentation for every component that changed in this cycle.", **nl)
        else:
            pdf.multi_cell(0, 6, f"Closing paragraph of page {number}. " + LOREM * 2, **nl)
    return bytes(pdf.output())


def encrypted_pdf_bytes() -> bytes:
    """pdf_bytes() encrypted with a user password (RC4, so no crypto library is needed)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes())))
    writer.encrypt(user_password="s3cret", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def scanned_pdf_bytes() -> bytes:
    """A page holding only an image of text: no text layer, as a scanner produces."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (600, 200), "white")
    ImageDraw.Draw(image).text((20, 80), "Scanned page text", fill="black")
    pdf = FPDF()
    pdf.add_page()
    pdf.image(image, x=10, y=10, w=180)
    return bytes(pdf.output())


def docx_bytes() -> bytes:
    """Title, nested headings, paragraphs, a table with a nested table and a merged cell, header/footer."""
    import docx

    document = docx.Document()
    document.core_properties.author = "Ann Author"
    document.add_heading("Employee Handbook", 0)
    document.add_paragraph("Welcome to the company handbook.")
    document.add_heading("Leave Policy", 1)
    document.add_paragraph("Employees receive 28 days of paid leave per year.")
    document.add_heading("Carry Over", 2)
    document.add_paragraph("Up to five unused days carry over to the next year.")
    table = document.add_table(rows=3, cols=3)
    for col, text in enumerate(["Grade", "Days", "Approver"]):
        table.cell(0, col).text = text
    for col, text in enumerate(["Junior", "25", "Team lead"]):
        table.cell(1, col).text = text
    table.cell(2, 0).text = "Senior"
    table.cell(2, 1).text = "30"
    inner = table.cell(2, 2).add_table(rows=1, cols=2)
    inner.cell(0, 0).text = "Director"
    inner.cell(0, 1).text = "HR partner"
    merged = document.add_table(rows=1, cols=3)
    merged.cell(0, 0).merge(merged.cell(0, 1)).text = "Spanning cell"
    merged.cell(0, 2).text = "Last cell"
    document.add_heading("Expenses", 1)
    document.add_paragraph("Submit receipts within 30 days.")
    document.sections[0].header.paragraphs[0].text = HEADER_TEXT
    document.sections[0].footer.paragraphs[0].text = FOOTER_TEXT
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pptx_bytes() -> bytes:
    """Two slides: bullets with speaker notes; a table, a text box and a grouped shape."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = "Quarterly Results"
    first.placeholders[1].text_frame.text = "Revenue grew 12 percent\nCosts fell in every region"
    first.notes_slide.notes_text_frame.text = "Mention the new Berlin office."
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Regional Sales"
    grid = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    for (r, c), text in {(0, 0): "Region", (0, 1): "Sales", (1, 0): "EMEA", (1, 1): "410"}.items():
        grid.cell(r, c).text = text
    second.shapes.add_textbox(Inches(1), Inches(4), Inches(4), Inches(1)).text_frame.text = "Figures in kEUR"
    group = second.shapes.add_group_shape()
    group.shapes.add_textbox(Inches(6), Inches(5), Inches(2), Inches(1)).text_frame.text = "Grouped remark"
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx_bytes() -> bytes:
    """Sheet 1 with a header row, numbers, a date and an empty row; sheet 2 without a header."""
    import datetime as dt

    from openpyxl import Workbook

    workbook = Workbook()
    inventory = workbook.active
    inventory.title = "Inventory"
    inventory.append(["Item", "Quantity", "Unit price", "Received"])
    inventory.append(["Widget", 12, 2.5, dt.datetime(2024, 5, 1)])
    inventory.append([None, None, None, None])
    inventory.append(["Gadget", 3.0, 10, dt.datetime(2024, 6, 2, 14, 30)])
    inventory.append(["Gizmo", None, 7])
    numbers = workbook.create_sheet("Readings")
    numbers.append([1, 2.25, "ok"])
    numbers.append([2, 3.5, "high"])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Deploying Kb</title>
<style>.hidden { display: none }</style>
<script>var trackingScriptSecret = "do not index";</script></head>
<body>
<header><div class="logo">SITE BANNER TEXT</div></header>
<nav><ul><li><a href="/">Home navigation link</a></li></ul></nav>
<div role="navigation">Breadcrumb trail text</div>
<main>
  <article>
    <h1>Deployment guide</h1>
    <p>Kb runs as a <b>single</b> container.</p>
    <h2>Requirements</h2>
    <ul><li>Docker 24 or newer</li><li>4 GB of memory<ul><li>8 GB with GPU models</li></ul></li></ul>
    <h3>Ports</h3>
    <table><tr><th>Port</th><th>Use</th></tr><tr><td>8080</td><td>HTTP API</td></tr></table>
    <pre>docker run -p 8080:8080 kb
  --workers 2</pre>
    <h2>Upgrades</h2>
    <blockquote>Back up the data volume first.</blockquote>
    <div>Loose text inside a div<br>continues here.</div>
  </article>
</main>
<aside>Related articles sidebar</aside>
<form><label>Subscribe to newsletter</label></form>
<footer>Copyright footer text</footer>
<noscript>Enable JavaScript notice</noscript>
</body></html>
"""

MARKDOWN_DOC = """# Operations Guide

Intro paragraph with a [link](https://example.com) and **bold** text
that wraps onto a second line.

## Backups

- Daily snapshots at 02:00
- Weekly full backups
  - kept for 90 days

```bash
# this is a comment, not a heading
restic backup /data
```

### Restore

| Step | Command |
|------|---------|
| 1 | `restic restore latest` |

## Monitoring

Watch the disk usage graph.
"""

TEXT_UNICODE = (
    "Zürich office notes — naïve café meetings cost €4.50 each.\n"
    "Second line of the first paragraph.\n\n"
    "Größere Änderungen kommen später; façade work starts in spring.\n"
)
TEXT_CP1252 = (
    "Le café de la gare sert des crêpes à 3 € et des boissons fraîches.\n"
    "Les élèves étudient la théorie générale de l’économie française.\n\n"
    "Deuxième paragraphe : « Très bien », déclara le maître d’hôtel, déjà prêt à partir.\n"
)
TEXT_LATIN1 = (
    "Die Größe der Fläche beträgt zwölf Quadratmeter, sagte der Bürgermeister.\n"
    "Über die Straße gehen wir später gemeinsam zur Bäckerei.\n\n"
    "Zweiter Absatz: schöne Grüße aus Köln und München.\n"
)
CSV_DOC = 'name,city,notes\nAda,London,"likes tea, and cake"\n\nLinus,Helsinki,\nGrace,"New York",admiral\n'


def eml_bytes(html_only: bool = False) -> bytes:
    """multipart/mixed: text/plain + text/html alternatives and a PDF attachment (or HTML only)."""
    message = EmailMessage()
    message["From"] = "Alice Example <alice@example.com>"
    message["To"] = "ops@example.com"
    message["Subject"] = "Maintenance window on Saturday – ünïcode"
    message["Date"] = "Tue, 14 May 2024 09:30:00 +0200"
    html = "<html><body><nav>Mail nav</nav><p>The <b>HTML</b> body says: database upgrade at 06:00.</p>"
    if html_only:
        message.set_content(html, subtype="html")
    else:
        message.set_content("Hello team,\n\nThe database upgrade starts at 06:00.\nExpect 30 minutes.\n")
        message.add_alternative(html, subtype="html")
        message.add_attachment(pdf_bytes(1), maintype="application", subtype="pdf", filename="runbook.pdf")
    return message.as_bytes()


def write_all(directory: Path) -> dict[str, Path]:
    """Write every fixture into `directory`; returns name -> path."""
    files: dict[str, bytes] = {
        "report.pdf": pdf_bytes(),
        "encrypted.pdf": encrypted_pdf_bytes(),
        "scanned.pdf": scanned_pdf_bytes(),
        "handbook.docx": docx_bytes(),
        "deck.pptx": pptx_bytes(),
        "stock.xlsx": xlsx_bytes(),
        "page.html": HTML_PAGE.encode("utf-8"),
        "guide.md": MARKDOWN_DOC.encode("utf-8"),
        "utf8.txt": TEXT_UNICODE.encode("utf-8"),
        "utf16.txt": TEXT_UNICODE.encode("utf-16"),  # with BOM, as Windows editors save it
        "cp1252.txt": TEXT_CP1252.encode("cp1252"),
        "latin1.txt": TEXT_LATIN1.encode("latin-1"),
        "people.csv": CSV_DOC.encode("utf-8"),
        "mail.eml": eml_bytes(),
        "html_only.eml": eml_bytes(html_only=True),
    }
    paths = {}
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        paths[name] = path
    return paths
