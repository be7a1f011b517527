"""Markdown and self-contained HTML from the report's sections, and :func:`render_report`."""

from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path

from lmdistill.report.render.blocks import Block, Bullets, Callout, Code, Image, Section, Table
from lmdistill.report.render.context import MISSING_ROLE, ROLE_LABELS, Context, ReportData
from lmdistill.report.render.costs import energy_section, environment_section, size_section, speed_section
from lmdistill.report.render.plots import plots_section
from lmdistill.report.render.quality import quality_section
from lmdistill.report.render.summary import pareto_lines, summary_lines


def build_sections(ctx: Context) -> list[Section]:
    intro = Section("Summary", summary_lines(ctx) + pareto_lines(ctx))
    missing = [f"{ROLE_LABELS[r]}: {MISSING_ROLE[r]}." for r in ctx.missing_roles]
    if missing:
        intro.blocks.append(Bullets(missing))
    sections = [
        intro,
        quality_section(ctx),
        size_section(ctx),
        speed_section(ctx),
        energy_section(ctx),
        plots_section(ctx),
        environment_section(ctx),
    ]
    if ctx.data.get("notes"):
        sections.append(Section("Notes", [Bullets([str(n) for n in ctx.data["notes"]])]))
    return sections


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, subtitle: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""] + ([subtitle, ""] if subtitle else [])
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                rules = ["---:" if block.numeric(j) else ":---" for j in range(len(block.header))]
                lines += ["| " + " | ".join(map(_md_cell, block.header)) + " |", "|" + "|".join(rules) + "|"]
                lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            elif isinstance(block, Image):
                lines.append(f"![{block.caption}]({block.filename})")
            elif isinstance(block, Callout):
                lines.append(f"> {'**' + block.text + '**' if block.kind == 'headline' else block.text}")
            elif isinstance(block, Code):
                lines += ["```", block.text, "```"]
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


CSS = """
body{margin:0;background:#f6f7f9;color:#1f2328;font:15px/1.55 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:24px auto;padding:28px 36px 48px;background:#fff;border:1px solid #e3e6ea;border-radius:10px}
h1{font-size:26px;margin:0 0 2px}
.subtitle{color:#59636e;margin:0 0 18px}
h2{font-size:19px;margin:34px 0 10px;padding-bottom:6px;border-bottom:1px solid #e3e6ea}
p{margin:8px 0}
.callout{padding:10px 14px;border-radius:6px;margin:10px 0;border-left:4px solid}
.summary{background:#eef5ff;border-color:#0969da}
.headline{background:#eef5ff;border-color:#0969da;font-size:17px;font-weight:600}
.caveat{background:#fff8e1;border-color:#d4a72c}
.note{background:#f6f8fa;border-color:#8c959f}
table{border-collapse:collapse;width:100%;margin:10px 0 14px;font-size:14px;font-variant-numeric:tabular-nums}
th,td{padding:7px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th.num,td.num{text-align:right}
th:first-child,td:first-child{white-space:nowrap}
th{background:#f6f8fa;font-weight:600;font-size:13px;color:#424a53}
tbody tr:hover{background:#fafbfc}
td.na{color:#8c959f}
td .why{font-size:12px}
figure{margin:14px 0;text-align:center}
figure img{max-width:100%;border:1px solid #e3e6ea;border-radius:6px}
figcaption{color:#59636e;font-size:13px;margin-top:4px}
pre{background:#f6f8fa;padding:10px 12px;border-radius:6px;white-space:pre-wrap;word-break:break-all;font-size:13px}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
ul{margin:8px 0;padding-left:22px}
"""


def _html_cell(text: str, tag: str, numeric: bool) -> str:
    classes = ["num"] if numeric else []
    content = html.escape(text)
    if text.startswith("n/a"):
        classes.append("na")
        reason = text[3:].strip()
        content = "n/a" + (f' <span class="why">{html.escape(reason)}</span>' if reason else "")
    attribute = f' class="{" ".join(classes)}"' if classes else ""
    return f"<{tag}{attribute}>{content}</{tag}>"


def _html_table(table: Table) -> str:
    """A table; a header of empty cells (a key/value table) is left out."""
    numeric = [table.numeric(j) for j in range(len(table.header))]
    head = "".join(_html_cell(h, "th", n) for h, n in zip(table.header, numeric)) if any(table.header) else ""
    body = "".join(
        "<tr>" + "".join(_html_cell(c, "td", n) for c, n in zip(row, numeric)) + "</tr>" for row in table.rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _html_block(block: Block) -> str:
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        caption = html.escape(block.caption)
        return f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'
    if isinstance(block, Callout):
        return f'<div class="callout {block.kind}">{html.escape(block.text)}</div>'
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>"
    return (
        f'<p class="na">{html.escape(block)}</p>'
        if block.startswith("n/a")
        else f"<p>{html.escape(block)}</p>"
    )


def to_html(title: str, subtitle: str, sections: list[Section]) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="subtitle">{html.escape(subtitle)}</p>')
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts += [_html_block(b) for b in section.blocks]
        parts.append("</section>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to a temporary sibling, then rename it over ``path``: never half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_report(data: ReportData | dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` (with its PNG plots beside it) and a self-contained ``report.html`` into
    ``out_dir``; returns their paths. See :mod:`lmdistill.report.render` for the ``data`` format.
    Each file is written to a temporary sibling and renamed into place."""
    ctx = Context.build(dict(data))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = str(ctx.data.get("title") or "Compression report")
    subtitle = " · ".join(str(ctx.data[k]) for k in ("task", "evaluation") if ctx.data.get(k))
    sections = build_sections(ctx)
    for block in (b for s in sections for b in s.blocks if isinstance(b, Image)):
        write_atomic(out / block.filename, block.png)
    md_path, html_path = out / "report.md", out / "report.html"
    write_atomic(md_path, to_markdown(title, subtitle, sections).encode("utf-8"))
    write_atomic(html_path, to_html(title, subtitle, sections).encode("utf-8"))
    return md_path, html_path
