"""Forget, retain and test accuracy across a model's versions, as an inline SVG.

Drawn on the server so the console needs no charting script. The three series differ in
marker shape and dash pattern as well as colour, so they read in grey scale too.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 150, 20, 44


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    colour: str
    dash: str
    marker: str  # circle, square or triangle


SERIES = (
    Series("forget_accuracy", "Forget accuracy", "#9a3412", "", "circle"),
    Series("retain_accuracy", "Retain accuracy", "#1d4ed8", "6 4", "square"),
    Series("test_accuracy", "Test accuracy", "#15803d", "2 3", "triangle"),
)


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    if kind == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{colour}"/>'
    if kind == "square":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{colour}"/>'
    return (f'<polygon points="{x:.1f},{y - 5:.1f} {x + 5:.1f},{y + 4:.1f} '
            f'{x - 5:.1f},{y + 4:.1f}" fill="{colour}"/>')


def accuracy_plot(points: list[tuple[int, dict[str, float | None]]]) -> str:
    """``points``: (version, {series key: percent or None}) in version order."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(points) - 1, 1)

    def x_of(index: int) -> float:
        return LEFT + (index * step if len(points) > 1 else plot_w / 2)

    def y_of(percent: float) -> float:
        return TOP + plot_h * (1 - min(max(percent, 0.0), 100.0) / 100.0)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             'role="img" aria-labelledby="plot-title plot-desc" class="plot">',
             '<title id="plot-title">Forget, retain and test accuracy by version</title>',
             f'<desc id="plot-desc">{escape(_description(points))}</desc>']
    parts += _axes(plot_w, plot_h, [v for v, _ in points], x_of, y_of)
    for s in SERIES:
        known = [(x_of(i), y_of(figures[s.key])) for i, (_, figures) in enumerate(points)
                 if figures.get(s.key) is not None]
        if len(known) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in known)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{s.colour}" '
                         f'stroke-width="2" stroke-dasharray="{s.dash}"/>')
        parts += [_marker(s.marker, x, y, s.colour) for x, y in known]
    parts += _legend()
    parts.append("</svg>")
    return "".join(parts)


def _axes(plot_w, plot_h, versions, x_of, y_of) -> list[str]:
    parts = []
    for percent in range(0, 101, 25):
        y = y_of(percent)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" '
                     'stroke="#d1d5db"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{percent}%</text>')
    for index, version in enumerate(versions):
        parts.append(f'<text x="{x_of(index):.1f}" y="{TOP + plot_h + 20}" '
                     f'text-anchor="middle">v{version}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h + 38}" '
                 'text-anchor="middle">version</text>')
    return parts


def _legend() -> list[str]:
    parts, x = [], WIDTH - RIGHT + 16
    for row, s in enumerate(SERIES):
        y = TOP + 14 + row * 24
        parts.append(f'<line x1="{x}" y1="{y}" x2="{x + 26}" y2="{y}" stroke="{s.colour}" '
                     f'stroke-width="2" stroke-dasharray="{s.dash}"/>')
        parts.append(_marker(s.marker, x + 13, y, s.colour))
        parts.append(f'<text x="{x + 32}" y="{y + 4}">{s.label}</text>')
    return parts


def _description(points) -> str:
    rows = []
    for version, figures in points:
        shown = ", ".join(f"{s.label.split()[0].lower()} {figures[s.key]:.1f}%"
                          for s in SERIES if figures.get(s.key) is not None)
        rows.append(f"v{version}: {shown or 'not measured'}")
    return "; ".join(rows)
