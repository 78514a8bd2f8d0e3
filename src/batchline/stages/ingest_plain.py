"""Ingest's fast path: whole runs of CSV lines that are each one record, found with numpy.

The careful splitter (ingest_csv.Splitter) looks at one physical line at a
time in Python, which costs about 10 s per million rows. Most lines of most
files need none of that care: a line with no quote character, or whose quotes
only open right after a delimiter and close right before one within the same
line, is one whole record, exactly as the splitter would find it. This module
takes a block of complete text lines (a `Bulk`, already checked to be text and
no longer than max_record_bytes) and marks, vectorised, each line that is not
plainly one record: blank lines, a quote anywhere else, an odd number of
quotes, a carriage return that does not end the line. The splitter hands the
runs between marked lines on as `Run`s and walks only the marked lines (and
those a quoted field carries it into) one by one, so its guarantees hold
unchanged: every physical line is counted, every record keeps its line.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

NEWLINE, RETURN = 0x0A, 0x0D


class Run(NamedTuple):
    """Consecutive one-line records: the first one's line, their bytes, how many, and how
    many bytes of the file had been read before the first one."""

    line: int
    data: bytes
    nrecords: int
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    @property
    def last_line(self) -> int:
        return self.line + self.nrecords - 1

    def first_end(self) -> int:
        """Bytes of the file read when the first record of the run was complete."""
        return self.start + self.data.index(b"\n") + 1

    def split(self, cut: int) -> tuple[Run, Run]:
        """The records before byte `cut` (a line start) and the ones from it on."""
        head = self.data.count(b"\n", 0, cut)
        return (Run(self.line, self.data[:cut], head, self.start),
                Run(self.line + head, self.data[cut:], self.nrecords - head, self.start + cut))


class Bulk:
    """Whole text lines from a source, consumed as runs of plain lines or one line at a time.

    `data` ends with a newline; every line in it is valid text no longer than
    max_record_bytes. `marked` holds the indexes of lines that the splitter
    must look at itself (see `marked_lines`); it is set by the splitter, which
    knows the delimiter and quote.
    """

    def __init__(self, line: int, data: bytes) -> None:
        self.line = line  # number of the next line to hand on
        self.data = data
        self.pos = 0
        self.ends: npt.NDArray[np.int64] = np.empty(0, np.int64)
        self.marked: npt.NDArray[np.int64] = np.empty(0, np.int64)
        self.index = 0  # index of the next line in `ends`

    def analyse(self, delimiter: bytes, quote: bytes | None) -> None:
        """Find line ends and the lines that are not plainly one record each."""
        self.ends, self.marked = marked_lines(self.data, delimiter, quote)

    def __bool__(self) -> bool:
        return self.pos < len(self.data)

    def next_line(self) -> tuple[int, bytes]:
        """The next physical line, for the careful splitter."""
        end = int(self.ends[self.index]) + 1
        raw = self.data[self.pos:end]
        number = self.line
        self.pos, self.line, self.index = end, self.line + 1, self.index + 1
        return number, raw

    def take_run(self, start: int) -> Run | None:
        """The plain lines from here to the next marked line as one Run; None if this one is
        marked. `start` is how many bytes of the file were read before this point."""
        stop = int(np.searchsorted(self.marked, self.index))
        upto = int(self.marked[stop]) if stop < len(self.marked) else len(self.ends)
        if upto == self.index:
            return None
        end = int(self.ends[upto - 1]) + 1
        run = Run(self.line, self.data[self.pos:end], upto - self.index, start)
        self.pos, self.line, self.index = end, self.line + run.nrecords, upto
        return run


def marked_lines(data: bytes, delimiter: bytes, quote: bytes | None,
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(offset of each line's newline, sorted indexes of lines that are not plainly one record).

    A line is plain when it is not blank, every carriage return in it ends it,
    and its quotes pair up within it so that each opening quote follows a
    delimiter or starts the line and each closing quote precedes a delimiter
    or ends the line: then its quoted fields hold no quote and no newline and
    the splitter's closed-record pattern matches it whole. With a multi-byte
    delimiter or quote every line with a quote is marked (the check works on
    bytes).
    """
    raw = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(raw == NEWLINE)
    starts = np.concatenate(([0], ends[:-1] + 1))
    length = ends - starts + 1
    bad = (length == 1) | ((length == 2) & (raw[starts] == RETURN))
    returns = np.flatnonzero(raw == RETURN)
    lone = returns[raw[returns + 1] != NEWLINE]  # data ends with \n, so returns + 1 exists
    bad[np.searchsorted(ends, lone)] = True
    if quote is not None:
        if len(quote) != 1 or len(delimiter) != 1:
            bad[np.searchsorted(ends, np.array(_find_all(data, quote), np.int64))] = True
        else:
            quotes = np.flatnonzero(raw == quote[0])
            if len(quotes):
                bad |= _bad_quotes(raw, ends, starts, quotes, delimiter[0])
    return ends, np.flatnonzero(bad)


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def _bad_quotes(raw: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64],
                starts: npt.NDArray[np.int64], quotes: npt.NDArray[np.int64],
                delimiter: int) -> npt.NDArray[np.bool_]:
    """Lines whose quotes do not pair up as opening-after-delimiter, closing-before-one."""
    line_of = np.searchsorted(ends, quotes)
    per_line = np.bincount(line_of, minlength=len(ends))
    # Rank of each quote within its line: even ranks open a field, odd ranks close it.
    first = np.searchsorted(quotes, starts)
    rank = np.arange(len(quotes)) - first[line_of]
    opening = rank % 2 == 0
    before = np.where(quotes > 0, raw[np.maximum(quotes - 1, 0)], NEWLINE)
    after = raw[quotes + 1]  # a quote is never the last byte: data ends with \n
    fits = np.where(opening, (before == delimiter) | (before == NEWLINE),
                    (after == delimiter) | (after == NEWLINE) | (after == RETURN))
    bad = per_line % 2 == 1
    bad[line_of[~fits]] = True
    return bad
