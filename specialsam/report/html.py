"""``report.md`` as one self-contained HTML page, its plots inline, for MLflow's artifact preview.

MLflow 3's markdown preview drops images (``![..](plot.png)`` shows as text), while its HTML
preview renders a page with ``data:`` images. This converts the subset of markdown the report uses
(headings, paragraphs, ``>`` notes, ``-`` lists, pipe tables, ``**bold**``, ``*em*``, `` `code` ``,
images of files beside the report); anything else passes through as escaped text.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:1em auto;line-height:1.45;color:#1f2933}"
    "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccd;padding:3px 8px}"
    "th{background:#f1f3f8}code{background:#f1f3f8;padding:0 3px}img{max-width:100%}"
    "blockquote{border-left:4px solid #e0a800;margin:.6em 0;padding:.2em .8em;background:#fff8e1}"
)
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def _inline(text: str, folder: Path) -> str:
    """Escape, then bold / em / code, and images of files in ``folder`` as data URIs."""
    out, last = [], 0
    for m in _IMAGE.finditer(text):
        out.append(_format(text[last : m.start()]))
        path = folder / m.group(2)
        if path.is_file() and path.suffix.lower() == ".png":
            data = base64.b64encode(path.read_bytes()).decode()
            out.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        else:
            out.append(_format(m.group(0)))
        last = m.end()
    out.append(_format(text[last:]))
    return "".join(out)


def _format(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", s)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str], folder: Path) -> str:
    head, body = _cells(lines[0]), [_cells(r) for r in lines[2:]]
    rows = ["<tr>" + "".join(f"<th>{_inline(c, folder)}</th>" for c in head) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{_inline(c, folder)}</td>" for c in r) + "</tr>" for r in body]
    return "<table>" + "".join(rows) + "</table>"


def markdown_to_html(text: str, folder: Path, title: str = "SpecialSAM report") -> str:
    """The page; ``folder`` holds the images the markdown refers to."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        start = i
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,6}) (.*)", line):
            n = len(m.group(1))
            blocks.append(f"<h{n}>{_inline(m.group(2), folder)}</h{n}>")
            i += 1
        elif line.startswith("|"):
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            blocks.append(_table(lines[start:i], folder))
        elif line.startswith(("- ", "* ")):
            while i < len(lines) and lines[i].startswith(("- ", "* ")):
                i += 1
            items = "".join(f"<li>{_inline(x[2:], folder)}</li>" for x in lines[start:i])
            blocks.append(f"<ul>{items}</ul>")
        elif line.startswith(">"):
            while i < len(lines) and lines[i].startswith(">"):
                i += 1
            quote = " ".join(x.lstrip("> ") for x in lines[start:i])
            blocks.append(f"<blockquote>{_inline(quote, folder)}</blockquote>")
        else:
            while i < len(lines) and lines[i].strip() and not re.match(r"#|\||- |\* |>", lines[i]):
                i += 1
            blocks.append(f"<p>{_inline(' '.join(lines[start:i]), folder)}</p>")
    body = "\n".join(blocks)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_html(report_md: Path) -> Path:
    """``report.html`` beside ``report_md``, its images inlined."""
    out = report_md.with_suffix(".html")
    out.write_text(markdown_to_html(report_md.read_text(), report_md.parent), encoding="utf-8")
    return out
