"""A self-contained HTML page: sections of text over pictures and sounds that sit beside it; no network needed."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

STYLE = """
body { font: 16px/1.55 system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.9em; margin-bottom: 0.2em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ddd; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; } img.px { image-rendering: pixelated; }
figcaption { font-size: 0.9em; color: #555; } table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
nav a { margin-right: 1em; } .slider { display: flex; align-items: center; gap: 1em; }
.slider input { width: 420px; } .note { color: #666; font-size: 0.9em; }
figure.sound { display: inline-block; margin: 0.4em 1em 0.4em 0; } figure.sound audio { width: 260px; }
"""

SLIDER_JS = """
for (const box of document.querySelectorAll('[data-frames]')) {
  const frames = JSON.parse(box.dataset.frames), labels = JSON.parse(box.dataset.labels);
  const img = box.querySelector('img'), input = box.querySelector('input'), label = box.querySelector('output');
  const show = () => { img.src = frames[input.value]; label.textContent = labels[input.value]; };
  input.addEventListener('input', show);
  show();
}
"""


@dataclass
class Picture:
    """A picture beside the page, with its caption."""

    src: str
    caption: str
    alt: str = ""
    pixels: bool = False   # a picture of pixels (not a plot): enlarge without smoothing


@dataclass
class Sound:
    """A player for a WAV beside the page."""

    src: str
    caption: str


@dataclass
class Slider:
    """An image that a range input steps through ``frames`` (files beside the page)."""

    id: str
    frames: list[str]
    labels: list[str]
    caption: str


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str]               # HTML (numbers already formatted in)
    figures: list[Picture | Slider | Sound] = field(default_factory=list)
    table: tuple[list[str], list[list[str]]] | None = None   # header, rows


def _figure(f: Picture | Slider | Sound) -> str:
    if isinstance(f, Sound):
        return (f'<figure class="sound"><audio controls preload="auto" src="{html.escape(f.src)}"></audio>'
                f'<figcaption>{f.caption}</figcaption></figure>')
    if isinstance(f, Slider):
        import json
        return (f'<figure class="slider-box" id="{f.id}" data-frames=\'{html.escape(json.dumps(f.frames))}\' '
                f'data-labels=\'{html.escape(json.dumps(f.labels))}\'>'
                f'<img class="px" src="{html.escape(f.frames[0])}" alt="{html.escape(f.caption)}">'
                f'<div class="slider"><input type="range" min="0" max="{len(f.frames) - 1}" value="0" '
                f'aria-label="step"><output></output></div><figcaption>{f.caption}</figcaption></figure>')
    cls = ' class="px"' if f.pixels else ""
    return (f'<figure><img{cls} src="{html.escape(f.src)}" alt="{html.escape(f.alt or f.caption)}">'
            f'<figcaption>{f.caption}</figcaption></figure>')


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(title: str, intro: str, sections: list[Section], footer: str) -> str:
    """The whole page as one HTML string (styles and script inline)."""
    nav = " ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    parts = []
    for i, s in enumerate(sections, 1):
        body = "".join(f"<p>{p}</p>" for p in s.paragraphs)
        table = _table(*s.table) if s.table else ""
        figures = "".join(_figure(f) for f in s.figures)
        parts.append(f'<section id="{s.id}"><h2>{i}. {html.escape(s.title)}</h2>{body}{figures}{table}</section>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><h1>{html.escape(title)}</h1><p>{intro}</p><nav>{nav}</nav>{"".join(parts)}'
            f'<footer><p class="note">{footer}</p></footer><script>{SLIDER_JS}</script></body></html>')
