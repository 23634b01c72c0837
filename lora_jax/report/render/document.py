"""The report as data (sections of paragraphs, tables and figures) and its two renderings.

The same `Document` becomes `report.md` (figures as relative links) and one self-contained
`report.html` (figures embedded as base64 data URIs, no external CSS or JS), so the two can
never disagree. Paragraphs use a small Markdown subset that both renderings understand:
`code` and **bold**.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_jax.runs.files import write_atomic
from lora_jax.runs.layout import SweepFolder


@dataclass
class Table:
    """A table of already formatted cells (strings), rendered alike in Markdown and HTML."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG on disk with a caption."""

    path: Path
    caption: str = ""


Block = str | Table | Figure


@dataclass
class Section:
    """A titled list of blocks: paragraphs (str), tables and figures."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2


@dataclass
class Document:
    title: str
    sections: list[Section] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    lines = [
        "| " + " | ".join(_md_cell(c) for c in table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines = [table.caption, "", *lines]
    return "\n".join(lines)


def to_markdown(doc: Document, base: Path | None = None) -> str:
    """Markdown; figure links are relative to `base` (the folder of report.md) when given."""
    out = [f"# {doc.title}"]
    for section in doc.sections:
        out += ["", f"{'#' * section.level} {section.title}"]
        for block in section.blocks:
            out.append("")
            if isinstance(block, Table):
                out.append(table_markdown(block))
            elif isinstance(block, Figure):
                link = Path(os.path.relpath(block.path, base)) if base else block.path
                out.append(f"![{block.caption}]({link.as_posix()})")
                if block.caption:
                    out += ["", f"*{block.caption}*"]
            else:
                out.append(block)
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    """HTML of a paragraph: escaped, with `code` and **bold** turned into tags."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{_inline(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    caption = f"<caption>{_inline(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
caption { caption-side: top; text-align: left; font-weight: bold; padding: 0.3em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { font-style: italic; }
"""


def to_html(doc: Document) -> str:
    """One self-contained HTML page: inline CSS, figures as base64 data URIs."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(doc.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_inline(doc.title)}</h1>",
    ]
    for section in doc.sections:
        level = min(max(section.level, 2), 6)
        parts.append(f"<h{level}>{_inline(section.title)}</h{level}>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_html_table(block))
            elif isinstance(block, Figure):
                alt = html.escape(block.caption or Path(block.path).name, quote=True)
                parts.append(
                    f'<figure><img alt="{alt}" src="{_data_uri(block.path)}">'
                    f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
                )
            else:
                parts.append(f"<p>{_inline(block)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


@dataclass
class ReportResult:
    """What `make_report` wrote and built."""

    markdown: Path
    html: Path
    paper: list[str]
    wandb_report: Any = None  # a wandb_workspaces Report, or None
    wandb_message: str = ""


def write_document(doc: Document, out: Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` of `doc` into `out`; returns their paths."""
    md, page = SweepFolder(out).report_md, SweepFolder(out).report_html
    write_atomic(md, to_markdown(doc, base=out))  # a stopped report leaves the old one whole
    write_atomic(page, to_html(doc))
    return md, page
