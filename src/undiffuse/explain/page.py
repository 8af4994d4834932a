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
nav a { margin-right: 1em; } nav ol { padding-left: 1.2em; } nav li { margin: 0.25em 0; }
.badge { font-size: 0.6em; font-weight: normal; color: #fff; background: #4a5568; border-radius: 0.8em;
  padding: 0.1em 0.6em; margin-left: 0.6em; vertical-align: middle; }
h2.level-head { border: none; color: #2b6cb0; font-size: 1.25em; margin-top: 2.6em; }
.slider { display: flex; align-items: center; gap: 1em; }
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


# The page's levels of difficulty, each a bit longer and more precise than the one before.
LEVELS = {1: "the idea in pictures", 2: "the Markov chain", 3: "Gaussian noise, pixel by pixel",
          4: "the network and the reverse process", 5: "the expert level"}
LEVEL_INTROS = {
    1: "No formulas: ink spreading in water, and why what comes back is new.",
    2: "The forward process as a chain of small Gaussian steps, and its closed form.",
    3: "What the noise is: one independent Gaussian number per pixel, at every step.",
    4: "The network's estimates, the reverse process step by step, samplers, the noise as a code, guidance.",
    5: "The equations behind it, each beside a number computed from the model.",
}


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str]               # HTML (numbers already formatted in)
    figures: list[Picture | Slider | Sound] = field(default_factory=list)
    table: tuple[list[str], list[list[str]]] | None = None   # header, rows
    level: int = 1                      # 1–5, a key of LEVELS

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"section {self.id!r}: level must be one of {sorted(LEVELS)}, got {self.level}")


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


def ordered(sections: list[Section]) -> list[Section]:
    """The sections by level, keeping their order within a level."""
    return sorted(sections, key=lambda s: s.level)


def _toc(sections: list[Section]) -> str:
    """The table of contents: per level its name, then links to its sections."""
    items = []
    for level, name in LEVELS.items():
        links = " ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections if s.level == level)
        if links:
            items.append(f'<li data-level="{level}"><a href="#level-{level}"><b>Level {level}: {name}</b></a> '
                         f"{links}</li>")
    return f'<nav id="toc"><b>Contents, by level</b><ol>{"".join(items)}</ol></nav>'


def render(title: str, intro: str, sections: list[Section], footer: str) -> str:
    """The whole page as one HTML string (styles and script inline), the sections ordered by level."""
    sections = ordered(sections)
    parts, level = [], 0
    for i, s in enumerate(sections, 1):
        if s.level != level:
            level = s.level
            parts.append(f'<h2 class="level-head" id="level-{level}">Level {level}: {LEVELS[level]}</h2>'
                         f'<p class="note">{LEVEL_INTROS[level]}</p>')
        body = "".join(f"<p>{p}</p>" for p in s.paragraphs)
        table = _table(*s.table) if s.table else ""
        figures = "".join(_figure(f) for f in s.figures)
        parts.append(f'<section id="{s.id}" data-level="{s.level}"><h2>{i}. {html.escape(s.title)}'
                     f'<span class="badge">level {s.level}</span></h2>{body}{figures}{table}</section>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><h1>{html.escape(title)}</h1><p>{intro}</p>{_toc(sections)}{"".join(parts)}'
            f'<footer><p class="note">{footer}</p></footer><script>{SLIDER_JS}</script></body></html>')
