"""The results store: one JSON object per line, appended as each cell finishes.

Crash safety: every record is one write of a whole line, flushed and fsynced. A process killed
mid-write can leave at most one partial last line; `ResultStore` drops it before appending again,
so a rerun loses at most the cells that were in flight and the file always parses. Only a line that
starts as a record does and never ended counts as partial: a file that is not a results store is
refused whole, never cut.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import LengthwiseError

_RECORD_START = b'{"id": "'  # how every record line begins (json.dumps keeps the dict's order, id first)


class ResultStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._done: tuple[tuple[int, int], set[str]] | None = None  # (file size and mtime, ids) of the last read

    def records(self) -> tuple[list[dict], list[str]]:
        """(valid records in file order, one warning per unreadable line)."""
        if not self.path.exists():
            return [], []
        return self._parse(self.path.read_bytes())

    @staticmethod
    def _parse(data: bytes) -> tuple[list[dict], list[str]]:
        """records() of the store's bytes, read once by whoever needs them."""
        out, warnings = [], []
        for n, raw in enumerate(data.split(b"\n"), 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                warnings.append(f"line {n}: not UTF-8 text; skipped")
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                warnings.append(f"line {n}: not valid JSON ({e.msg}); skipped")
                continue
            if not isinstance(rec, dict) or "id" not in rec:
                warnings.append(f"line {n}: not a result record; skipped")
                continue
            out.append(rec)
        return out, warnings

    def done_ids(self) -> set[str]:
        """Ids of the finished cells. The file is parsed again only when it changed since the last call
        (a grid asks once per cell, and a store of a few thousand cells takes tens of milliseconds to parse)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return set()
        stamp = (st.st_size, st.st_mtime_ns)
        if self._done is None or self._done[0] != stamp:
            self._done = stamp, {r["id"] for r in self.records()[0]}
        return set(self._done[1])

    def check(self) -> None:
        """Refuse, before any work, a file that is not a results store: appending would bury its content, and
        cutting an unfinished-looking last line would lose it."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        tail = data[data.rfind(b"\n") + 1:]
        records, warnings = self._parse(data)
        if not records and warnings and not (len(warnings) == 1 and tail.startswith(_RECORD_START)):
            raise LengthwiseError(f"{self.path} is not an eval results store (no line of it is a result record): "
                                  "write the results to a new file")
        if tail.strip() and not tail.startswith(_RECORD_START):
            raise LengthwiseError(f"{self.path} ends in a line that is not a result record: remove that line, "
                                  "or write the results to a new file")

    def open_for_append(self) -> None:
        """Check the store can be written, and end it cleanly: a partial last line left by a killed run is cut,
        a whole record that lost its newline keeps it."""
        self.check()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch()
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                try:
                    json.loads(data[cut:])
                    f.write(b"\n")  # a whole record (the file pointer is at the end)
                except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
                    f.truncate(cut)

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise LengthwiseError(f"cannot append to {self.path}: {e.strerror or e}") from None
