"""What the CLI prints: a live table on a terminal, plain lines everywhere else.

Without a terminal (CI, a launcher pod's log, a pipe) nothing is wrapped or
truncated, each stage state change is one line, and a running stage prints a
heartbeat line every BATCHLINE_PROGRESS_SECONDS (30) so a long stage is not
silent for minutes. Progress goes to stderr; results (tables, JSON) to stdout.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import IO, Any

from batchline.manifest import RunManifest, StageRecord, StageState

COLORS = {"succeeded": "green", "reused": "cyan", "failed": "red", "running": "yellow",
          "cancelled": "magenta", "stale": "red"}


def is_terminal(stream: IO[str]) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def detail(entry: StageRecord) -> str:
    """A stage's state in words, without repeating the state's own name."""
    if entry.state is StageState.RUNNING:
        attempt = entry.attempts[-1].number if entry.attempts else 1
        phase = entry.phase if entry.phase not in ("", "running", "submitted") else ""
        return f"attempt {attempt}" + (f", {phase}" if phase else "")
    reason = entry.reason
    for word in (str(entry.state), "ran:"):
        reason = reason.removeprefix(word).strip()
    return reason


def elapsed(entry: StageRecord, now: float | None = None) -> str:
    if not entry.started_at:
        return ""
    return duration((entry.ended_at or now or time.time()) - entry.started_at)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def stage_lines(manifest: RunManifest) -> list[str]:
    """The plain form of the stage table: one line per stage."""
    lines = [f"run {manifest.run_id} ({manifest.shown_state()})"]
    for stage, entry in manifest.stages.items():
        parts = [f"{stage}: {entry.state}"]
        if entry.rows is not None:
            parts.append(f"{entry.rows:,} rows")
        if entry.started_at:
            parts.append(elapsed(entry))
        text = detail(entry)
        lines.append(", ".join(parts) + (f" ({text})" if text else ""))
    return lines


def stage_table(manifest: RunManifest) -> Any:
    from rich.markup import escape
    from rich.table import Table

    state = manifest.shown_state()
    table = Table(title=f"run {manifest.run_id} ({state})", title_justify="left")
    for col in ("stage", "state", "rows", "elapsed", "detail"):
        table.add_column(col, justify="right" if col in ("rows", "elapsed") else "left",
                         no_wrap=col == "stage")
    for stage, entry in manifest.stages.items():
        rows = f"{entry.rows:,}" if entry.rows is not None else ""
        color = COLORS.get(str(entry.state), "white")
        table.add_row(stage, f"[{color}]{entry.state}[/{color}]", rows, elapsed(entry),
                      escape(detail(entry)))
    return table


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


# What `runs` and `status` show of a run's metrics, to compare runs at a glance: the
# model's headline figure (the first its objective has), a fleet's counts, what score did.
FIGURES = {"train": (("auc_valid", "r2_valid", "accuracy_valid"),
                     ("segments_trained", "segments_failed")),
           "score": (("rows_scored",), ("drift_alerts",)),
           "monitor": (("outcomes_matched",), ("degraded_alerts",))}


def figures(manifest: RunManifest) -> str:
    """The run's key figures in one line ("" before any stage has metrics)."""
    parts = []
    for stage, groups in FIGURES.items():
        metrics = manifest.stages[stage].metrics if stage in manifest.stages else {}
        first, rest = groups
        headline = next((k for k in first if k in metrics), None)
        for key in ([headline] if headline else []) + [k for k in rest if k in metrics]:
            parts.append(f"{key} {number(metrics[key])}")
    return ", ".join(parts)


def summary_lines(manifest: RunManifest, seconds: float) -> list[str]:
    """After a run: each stage's metrics and warnings, then one line of counts."""
    lines = []
    for stage, entry in manifest.stages.items():
        if entry.metrics:
            lines.append(f"{stage}: " + ", ".join(f"{k} {number(v)}"
                                                  for k, v in entry.metrics.items()))
        lines += [f"warning: {stage}: {w}" for w in entry.warnings]
    counts = Counter(str(e.state) for e in manifest.stages.values())
    order = ["succeeded", "reused", "failed", "cancelled", "running", "pending", "skipped"]
    shown = ", ".join(f"{counts[s]} {s}" for s in order if counts[s])
    from batchline import layout, storage
    from batchline.errors import BatchlineError
    from batchline.run_report import report_uri

    lines.append(f"run {manifest.run_id} {manifest.shown_state()} in {duration(seconds)}: "
                 f"{shown}; manifest {layout.manifest_uri(manifest.root, manifest.run_id)}")
    report = report_uri(manifest.root, manifest.run_id)
    try:  # the launcher writes it at the end, best-effort: point to it only if it is there
        if storage.is_file(report):
            lines.append(f"report {report}")
    except BatchlineError:
        pass
    return lines


class Progress:
    """Follows a run for a person: a live table on a terminal, lines otherwise."""

    def __init__(self, stream: IO[str] | None = None, heartbeat: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.terminal = is_terminal(self.stream)
        self.heartbeat = heartbeat if heartbeat is not None else float(
            os.environ.get("BATCHLINE_PROGRESS_SECONDS", "30"))
        self.seen: dict[str, tuple[str, str]] = {}
        self.last_beat: dict[str, float] = {}
        self.live: Any = None

    def __enter__(self) -> Progress:
        if self.terminal:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(file=self.stream), refresh_per_second=4,
                             transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def line(self, text: str) -> None:
        self.stream.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self.stream.flush()

    def on_change(self, manifest: RunManifest) -> None:
        if self.live is not None:
            self.live.update(stage_table(manifest))
            return
        for stage, entry in manifest.stages.items():
            state = (str(entry.state), entry.phase)
            # Submitted and pending (a pod waiting for a node) are moments on the
            # way to running; one that lasts shows in the heartbeat lines.
            waiting = entry.state is StageState.RUNNING and entry.phase in ("submitted",
                                                                            "pending")
            if self.seen.get(stage) != state and entry.state is not StageState.PENDING \
                    and not waiting:
                self.seen[stage] = state
                self.last_beat[stage] = time.monotonic()
                text = detail(entry)
                rows = f", {entry.rows:,} rows" if entry.rows is not None and \
                    entry.state.done else ""
                self.line(f"{manifest.run_id} {stage}: {entry.state}{rows}"
                          + (f" ({text})" if text else ""))

    def on_tick(self, manifest: RunManifest) -> None:
        if self.live is not None:
            self.live.update(stage_table(manifest))
            return
        now = time.monotonic()
        for stage, entry in manifest.stages.items():
            if entry.state is StageState.RUNNING and \
                    now - self.last_beat.get(stage, now) >= self.heartbeat:
                self.last_beat[stage] = now
                self.line(f"{manifest.run_id} {stage}: still running after {elapsed(entry)} "
                          f"({detail(entry)})")
            self.last_beat.setdefault(stage, now)
