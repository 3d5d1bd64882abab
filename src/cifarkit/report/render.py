"""Write a run report, given as a list of blocks, as Markdown and as one self-contained HTML page.

A block is a tuple whose first item says what it is: ("h1" | "h2" | "h3", text), ("p", text), ("warn", text),
("table", header, rows) or ("img", src, alt, caption). Texts may use **bold** and `code`; table cells are strings.
What the report says is `cifarkit.report`'s business; this module only writes it out, with the formats of its numbers
(percentages, learning rates, durations).
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

Block = tuple[Any, ...]

STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
         "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem}"
         "th{background:#f3f3f3}img{max-width:100%}figure{margin:1.5rem 0}figcaption{color:#444}"
         ".warn{background:#fff3cd;border:2px solid #e0a800;padding:.8rem;font-size:1.1rem}")


def fmt_pct(x: Any) -> str:
    """A fraction as a percentage with two decimals ("57.00%"); None or NaN: "n/a"."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.2f}%"


def fmt_lr(x: Any) -> str:
    """A learning rate in scientific notation ("2.500e-04"); None: "n/a"."""
    return "n/a" if x is None else f"{float(x):.3e}"


def fmt_count(n: Any, noun: str) -> str:
    """"1 epoch", "24 epochs", "2,000 images": a count with its noun, singular for one."""
    return f"{f'{n:,}' if isinstance(n, int) else n} {noun}{'' if n == 1 else 's'}"


def fmt_epoch(x: Any) -> str:
    """A (fractional) epoch as people write it: "5", "0.42"; at most two decimals."""
    return f"{float(x):.2f}".rstrip("0").rstrip(".")


def fmt_duration(seconds: Any) -> str:
    """Seconds as "3 min 5 s", or "36.5 s" under a minute; None: "n/a"."""
    if seconds is None:
        return "n/a"
    m, s = divmod(float(seconds), 60)
    return f"{int(m)} min {s:.0f} s" if m else f"{s:.1f} s"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown (a warning becomes a [!WARNING] alert)."""
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "warn":
            out.append("> [!WARNING]\n> " + rest[0])
        elif kind == "table":
            head, rows = rest
            lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
            out.append("\n".join(lines + ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]))
        elif kind == "img":
            src, alt, caption = rest
            out.append(f"![{alt}]({src})\n\n*{caption}*")
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(blocks: list[Block], title: str) -> str:
    """The blocks as one HTML page with its style inline (images stay relative links)."""
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{STYLE}</style></head><body>"]
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_inline_html(rest[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(rest[0])}</p>")
        elif kind == "warn":
            out.append(f"<p class='warn'>{_inline_html(rest[0])}</p>")
        elif kind == "table":
            head, rows = rest
            cells = "".join(f"<th>{_inline_html(h)}</th>" for h in head)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in rows)
            out.append(f"<table><tr>{cells}</tr>{body}</table>")
        elif kind == "img":
            src, alt, caption = rest
            out.append(f"<figure><img src='{html.escape(src)}' alt='{html.escape(alt)}'>"
                       f"<figcaption>{_inline_html(caption)}</figcaption></figure>")
    return "\n".join(out + ["</body></html>"]) + "\n"
