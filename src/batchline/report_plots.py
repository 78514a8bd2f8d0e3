"""Inline SVG plots for the run report: pure Python, no fonts, no scripts, no links.

Each function returns one `<svg>` element as text, sized in CSS pixels, with an
`aria-label` saying what it shows (and `class="plot"`, which the report's tests
count). Coordinates are rounded to one decimal: 500 sparklines stay small.
No `xmlns`: inline SVG in HTML needs none, and the report holds no URL at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

AXIS = "#888"
EXPECTED = "#9aa7b4"  # training rows, the reference
ACTUAL = "#2f6fb0"    # this run
BAD = "#c0392b"
GOOD = "#2e8b57"
BAND = "#e8eef5"
STATE_COLORS = {"succeeded": GOOD, "reused": "#3a9fbf", "failed": BAD, "running": "#d4a017",
                "cancelled": "#8e44ad", "skipped": "#bbb", "pending": "#ddd"}


def _n(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def svg(width: int, height: int, body: str, label: str, kind: str) -> str:
    """One plot: its elements in an `<svg>` with a title that says what it shows."""
    return (f'<svg class="plot plot-{kind}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
            f"<title>{escape(label)}</title>{body}</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", size: int = 11,
          color: str = "#333") -> str:
    return (f'<text x="{_n(x)}" y="{_n(y)}" font-size="{size}" fill="{color}" '
            f'text-anchor="{anchor}">{escape(text)}</text>')


def _vertical_text(x: float, y: float, text: str) -> str:
    return (f'<text transform="rotate(-90 {_n(x)} {_n(y)})" x="{_n(x)}" y="{_n(y)}" '
            f'font-size="11" fill="#333" text-anchor="middle">{escape(text)}</text>')


def _frame(left: float, top: float, width: float, height: float) -> str:
    return (f'<path d="M{_n(left)} {_n(top)}V{_n(top + height)}H{_n(left + width)}" '
            f'stroke="{AXIS}" fill="none"/>')


def _polyline(points: Sequence[tuple[float, float]], color: str, width: float = 2,
              dash: str = "") -> str:
    coords = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<polyline points="{coords}" fill="none" stroke="{color}" '
            f'stroke-width="{width}"{extra}/>')


def gantt(stages: Sequence[tuple[str, str, float | None, float | None]], total: float) -> str:
    """Each stage's bar from its start to its end (seconds after the run began);
    a stage that did not run (reused, skipped) gets a label instead of a bar."""
    width, left, row = 640, 90, 24
    span = width - left - 70
    # The run's own span, or its stages' if they reach further (a run still going).
    ends = [start + seconds for _, _, start, seconds in stages
            if start is not None and seconds is not None]
    total = max(total, *ends, 1e-3)
    body = []
    for i, (name, state, start, seconds) in enumerate(stages):
        y = 8 + i * row
        body.append(_text(left - 8, y + 13, name, "end"))
        color = STATE_COLORS.get(state, AXIS)
        if start is None or seconds is None:
            body.append(_text(left, y + 13, state, color=color))
            continue
        x = left + span * start / total
        w = max(2.0, span * seconds / total)
        body.append(f'<rect x="{_n(x)}" y="{y}" width="{_n(w)}" height="16" rx="2" '
                    f'fill="{color}"/>')
        body.append(_text(x + w + 5, y + 13, duration(seconds)))
    height = 16 + row * len(stages)
    return svg(width, height, "".join(body), "stage timings: one bar per stage from its "
               "start to its end", "gantt")


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 4.2s, 7m35s."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def histograms(bins: Sequence[str], expected: Sequence[int], actual: Sequence[int],
               name: str) -> str:
    """Shares per bin: the training rows (grey) beside this run's rows (blue)."""
    width, height, left, top, bottom = 420, 180, 34, 20, 40
    legend = (f'<rect x="{width - 150}" y="4" width="9" height="9" fill="{EXPECTED}"/>'
              + _text(width - 138, 12, "training", size=10)
              + f'<rect x="{width - 80}" y="4" width="9" height="9" fill="{ACTUAL}"/>'
              + _text(width - 68, 12, "this run", size=10))
    total_e, total_a = max(sum(expected), 1), max(sum(actual), 1)
    shares = [(e / total_e, a / total_a) for e, a in zip(expected, actual, strict=True)]
    plot_h = height - top - bottom
    slot = (width - left - 6) / max(len(shares), 1)
    peak = max((max(p) for p in shares), default=1.0) or 1.0
    body = [_frame(left, top, width - left - 6, plot_h), legend,
            _text(left - 4, top + 8, f"{peak:.0%}", "end", 9)]
    for i, (e, a) in enumerate(shares):
        x = left + i * slot + 1
        bar = max(1.0, slot / 2 - 1)
        for j, (share, color) in enumerate(((e, EXPECTED), (a, ACTUAL))):
            h = plot_h * share / peak
            body.append(f'<rect x="{_n(x + j * bar)}" y="{_n(top + plot_h - h)}" '
                        f'width="{_n(bar)}" height="{_n(h)}" fill="{color}"/>')
        label = bins[i] if i < len(bins) else ""
        body.append(f'<text font-size="8" fill="#555" transform="translate({_n(x + bar)},'
                    f'{_n(top + plot_h + 8)}) rotate(35)">{escape(label[:14])}</text>')
    return svg(width, height, "".join(body), f"{name}: share of rows per bin, training "
               "(grey) and this run (blue)", "histogram")


def _scale(lo: float, hi: float, a: float, b: float) -> tuple[float, float]:
    """The linear map from [lo, hi] to [a, b] as (factor, offset)."""
    factor = (b - a) / (hi - lo) if hi != lo else 0.0
    return factor, a - lo * factor


def calibration(bins: Sequence[tuple[float, float]]) -> str:
    """Mean predicted against observed rate per bin, with the diagonal of perfect
    calibration; both axes from 0 to the largest value."""
    size, pad = 260, 34
    hi = max([0.05, *(max(p, o) for p, o in bins)]) * 1.05
    k, off = _scale(0, hi, pad, size - 10)
    ky, offy = _scale(0, hi, size - pad, 10)
    body = [_frame(pad, 10, size - 10 - pad, size - pad - 10),
            _polyline([(off, offy), (k * hi + off, ky * hi + offy)], AXIS, 1, "4 3")]
    points = [(k * p + off, ky * o + offy) for p, o in bins]
    body.append(_polyline(points, ACTUAL))
    body += [f'<circle cx="{_n(x)}" cy="{_n(y)}" r="3" fill="{ACTUAL}"/>' for x, y in points]
    body += [_text(size / 2, size - 6, "predicted", "middle"),
             _vertical_text(12, size / 2, "observed"),
             _text(pad, size - pad + 12, "0", "middle", 9),
             _text(size - 10, size - pad + 12, f"{hi:.2f}", "end", 9)]
    return svg(size, size, "".join(body), "calibration: observed rate against mean "
               "predicted probability per bin; the dashed diagonal is perfect", "calibration")


def roc(fpr: Sequence[float], tpr: Sequence[float], auc: float | None) -> str:
    """The ROC curve of the validation rows, with the chance diagonal."""
    size, pad = 260, 34
    k, off = _scale(0, 1, pad, size - 10)
    ky, offy = _scale(0, 1, size - pad, 10)
    points = sorted(zip(fpr, tpr, strict=True))
    body = [_frame(pad, 10, size - 10 - pad, size - pad - 10),
            _polyline([(off, offy), (k + off, ky + offy)], AXIS, 1, "4 3"),
            _polyline([(k * x + off, ky * y + offy) for x, y in points], ACTUAL),
            _text(size / 2, size - 6, "false positive rate", "middle"),
            _vertical_text(12, size / 2, "true positive rate")]
    if auc is not None:
        body.append(_text(size - 16, size - pad - 8, f"AUC {auc:.3f}", "end", 12))
    return svg(size, size, "".join(body), "ROC curve of the validation rows; the dashed "
               "diagonal is chance", "roc")


def accuracy_line(labels: Sequence[str], values: Sequence[float | None],
                  training: float | None, tolerance: float, degraded: Sequence[bool],
                  metric: str) -> str:
    """The metric by month against its value at training, the tolerance band shaded;
    degraded points red."""
    width, height, left, top, bottom = 640, 220, 44, 12, 46
    known = [v for v in values if v is not None]
    anchors = [*known, *([training - tolerance, training + tolerance]
                         if training is not None else [])]
    if not anchors:
        return ""
    lo, hi = min(anchors), max(anchors)
    margin = (hi - lo) * 0.1 or 0.01
    lo, hi = lo - margin, hi + margin
    ky, offy = _scale(lo, hi, height - bottom, top)
    step = (width - left - 50) / max(len(labels) - 1, 1)  # room for the last label
    xs = [left + 7 + i * step for i in range(len(labels))]
    body = [_frame(left, top, width - left - 6, height - top - bottom),
            _text(left - 4, top + 8, f"{hi:.3f}", "end", 9),
            _text(left - 4, height - bottom, f"{lo:.3f}", "end", 9)]
    if training is not None:
        y1, y2 = ky * (training + tolerance) + offy, ky * (training - tolerance) + offy
        body.append(f'<rect x="{left + 1}" y="{_n(y1)}" width="{width - left - 7}" '
                    f'height="{_n(y2 - y1)}" fill="{BAND}"/>')
        y = ky * training + offy
        body.append(_polyline([(left, y), (width - 6, y)], EXPECTED, 1.5, "6 3"))
        body.append(_text(width - 8, y - 4, f"training {training:.3f} ± {tolerance:g}", "end",
                          10, "#555"))
    segment: list[tuple[float, float]] = []
    for x, v in zip(xs, values, strict=True):
        if v is None:
            if len(segment) > 1:
                body.append(_polyline(segment, ACTUAL))
            segment = []
            continue
        segment.append((x, ky * v + offy))
    if len(segment) > 1:
        body.append(_polyline(segment, ACTUAL))
    for x, v, bad in zip(xs, values, degraded, strict=True):
        if v is not None:
            body.append(f'<circle cx="{_n(x)}" cy="{_n(ky * v + offy)}" r="{4 if bad else 3}" '
                        f'fill="{BAD if bad else ACTUAL}"/>')
    every = max(1, len(labels) // 12)
    body += [f'<text font-size="9" fill="#555" transform="translate({_n(x - 4)},'
             f'{height - bottom + 10}) rotate(35)">{escape(label)}</text>'
             for i, (x, label) in enumerate(zip(xs, labels, strict=True)) if i % every == 0]
    return svg(width, height, "".join(body), f"{metric} by month against its value at "
               "training; the shaded band is the tolerance, red points are degraded",
               "accuracy")


def sparkline(values: Sequence[float], warn: float) -> str:
    """One bar per value (a segment's PSI per feature), red from `warn` up; two paths
    whatever the number of bars, so 500 rows of them stay small."""
    width, height, bar = 5 * len(values) + 2, 20, 4
    peak = max(0.3, *values) if values else 0.3
    paths: dict[bool, list[str]] = {False: [], True: []}
    for i, v in enumerate(values):
        h = max(1.0, (height - 2) * min(v, peak) / peak)
        paths[v >= warn].append(f"M{1 + 5 * i} {height}v-{_n(h)}h{bar}v{_n(h)}z")
    body = "".join(f'<path d="{"".join(p)}" fill="{BAD if bad else EXPECTED}"/>'
                   for bad, p in paths.items() if p)
    return (f'<svg class="spark" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" aria-hidden="true">{body}</svg>')
