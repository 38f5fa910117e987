"""A generated corpus of mixed enterprise documents for the ingestion benchmarks.

Sentences come from the FAQ answers of zaragoza-construction-faq, mixed with
random reference numbers so that every document is distinct (no accidental
duplicates). Formats: PDF, DOCX, PPTX, XLSX, HTML, Markdown, text, CSV, EML, in
proportions typical of a company share. Files are cached under bench/out/.

    .venv/bin/python -m bench.corpus --docs 2000 --out bench/out/corpus
"""

from __future__ import annotations

import argparse
import io
import random
import re
from email.message import EmailMessage
from pathlib import Path

import zaragoza_construction_faq as faq

MIX = [
    ("pdf", 20),
    ("docx", 15),
    ("pptx", 8),
    ("xlsx", 7),
    ("html", 15),
    ("md", 12),
    ("txt", 10),
    ("csv", 5),
    ("eml", 8),
]


def _sentences() -> list[str]:
    out: list[str] = []
    for item in faq.load(lang="en"):
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", item["a"]) if len(s.strip()) > 20)
    return out


class Writer:
    def __init__(self, seed: int, words_per_doc: int) -> None:
        self.rng = random.Random(seed)
        self.sentences = _sentences()
        self.words_per_doc = words_per_doc

    def paragraph(self, n_sentences: int) -> str:
        parts = []
        for _ in range(n_sentences):
            s = self.rng.choice(self.sentences)
            if self.rng.random() < 0.4:
                s += f" Reference {self.rng.randint(10_000, 99_999)}-{self.rng.choice('ABCDEFGH')}."
            parts.append(s)
        return " ".join(parts)

    def sections(self) -> list[tuple[str, list[str]]]:
        """(heading, paragraphs) totalling about words_per_doc words."""
        out, words = [], 0
        while words < self.words_per_doc:
            heading = " ".join(self.rng.choice(self.sentences).split()[:4]).strip(",.;:")
            paras = [self.paragraph(self.rng.randint(3, 6)) for _ in range(self.rng.randint(2, 4))]
            words += sum(len(p.split()) for p in paras)
            out.append((heading, paras))
        return out

    def pdf(self) -> bytes:
        from fpdf import FPDF

        pdf = FPDF()
        pdf.set_font("Helvetica", size=10)
        for heading, paras in self.sections():
            pdf.add_page()
            pdf.multi_cell(
                0, 6, heading.encode("latin-1", "replace").decode("latin-1"), new_x="LMARGIN", new_y="NEXT"
            )
            for p in paras:
                pdf.multi_cell(
                    0, 5, p.encode("latin-1", "replace").decode("latin-1"), new_x="LMARGIN", new_y="NEXT"
                )
                pdf.ln(3)
        return bytes(pdf.output())

    def docx(self) -> bytes:
        import docx

        d = docx.Document()
        for heading, paras in self.sections():
            d.add_heading(heading, level=1)
            for p in paras:
                d.add_paragraph(p)
        table = d.add_table(rows=3, cols=3)
        for r in range(3):
            for c in range(3):
                table.cell(r, c).text = f"item {self.rng.randint(1, 999)}"
        buf = io.BytesIO()
        d.save(buf)
        return buf.getvalue()

    def pptx(self) -> bytes:
        from pptx import Presentation

        prs = Presentation()
        for heading, paras in self.sections():
            slide = prs.slides.add_slide(prs.slide_layouts[1])
            slide.shapes.title.text = heading
            slide.placeholders[1].text_frame.text = "\n".join(paras)
        buf = io.BytesIO()
        prs.save(buf)
        return buf.getvalue()

    def xlsx(self) -> bytes:
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        ws.append(["id", "topic", "notes"])
        for i, (heading, paras) in enumerate(self.sections()):
            for p in paras:
                ws.append([i, heading, p])
        buf = io.BytesIO()
        wb.save(buf)
        return buf.getvalue()

    def html(self) -> bytes:
        body = "".join(
            f"<h2>{h}</h2>" + "".join(f"<p>{p}</p>" for p in paras) for h, paras in self.sections()
        )
        return (
            "<!doctype html><html><head><title>Page</title><script>var x=1;</script></head><body>"
            f"<nav><a href='/'>Home</a></nav><main><h1>Guide</h1>{body}</main>"
            "<footer>(c) Zaragoza AB</footer>"
            "</body></html>"
        ).encode()

    def md(self) -> bytes:
        return "\n\n".join(f"## {h}\n\n" + "\n\n".join(paras) for h, paras in self.sections()).encode()

    def txt(self) -> bytes:
        return "\n\n".join(p for _, paras in self.sections() for p in paras).encode()

    def csv(self) -> bytes:
        rows = ["ticket,subject,resolution"]
        for i, (h, paras) in enumerate(self.sections()):
            for p in paras:
                rows.append(f'{i},"{h}","{p.replace(chr(34), "")}"')
        return "\n".join(rows).encode()

    def eml(self) -> bytes:
        msg = EmailMessage()
        msg["From"] = "support@zaragoza.example"
        msg["To"] = "customer@example.com"
        msg["Subject"] = f"Re: case {self.rng.randint(1000, 9999)}"
        msg.set_content("\n\n".join(p for _, paras in self.sections() for p in paras))
        return bytes(msg)


def generate(out: Path, docs: int, words_per_doc: int = 2500, seed: int = 7) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in out.iterdir() if p.is_file())
    if len(existing) >= docs:
        return existing[:docs]
    writer = Writer(seed, words_per_doc)
    kinds = [k for k, w in MIX for _ in range(w)]
    paths = []
    for i in range(docs):
        kind = kinds[i % len(kinds)]
        path = out / f"doc{i:05d}.{kind}"
        if not path.exists():
            path.write_bytes(getattr(writer, kind)())
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--words", type=int, default=2500)
    parser.add_argument("--out", type=Path, default=Path("bench/out/corpus"))
    args = parser.parse_args()
    paths = generate(args.out, args.docs, args.words)
    print(f"{len(paths)} files, {sum(p.stat().st_size for p in paths) / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
