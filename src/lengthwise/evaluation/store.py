"""The results store: a header line, then one JSON object per line, appended as each cell finishes.

The first line says what the file is: `{"lengthwise_store": FORMAT, "lengthwise": version, "config": {...}}`,
the config being every setting that can change a score (grid.store_config). A file without that line is
refused as a store, so a foreign JSONL is never appended to. A store holds one config's cells; a second config
goes in only when asked for (`--append-config`), as a `{"lengthwise_config": {...}}` line, and every record
carries its own config, so `report` keeps them apart.

One writer at a time: `open_for_append` takes an advisory lock (fcntl.flock) on the file, held until `close`.
A second writer is refused with the holder's pid.

Crash safety: every record is one write of a whole line, flushed and fsynced. A process killed
mid-write can leave at most one partial last line; `open_for_append` drops it before appending again,
so a rerun loses at most the cells that were in flight and the file always parses. Only a line that
starts as a record does and never ended counts as partial: a file that is not a results store is
refused whole, never cut.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

from ..errors import LengthwiseError

FORMAT = 2  # 1: the header-less stores of lengthwise before issue 20
HEADER = "lengthwise_store"
CONFIG = "lengthwise_config"
_RECORD_START = b'{"id": "'  # how every record line begins (json.dumps keeps the dict's order, id first)
_STARTS = (_RECORD_START, b'{"' + CONFIG.encode() + b'": ')


def _version() -> str:
    from .. import __version__
    return __version__


def _json(line: bytes):
    """json.loads that turns every way bytes can fail to be JSON (bad UTF-8, nesting past the recursion
    limit, integers past Python's digit limit) into ValueError."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(getattr(e, "msg", None) or type(e).__name__) from None


def config_diff(have: dict, want: dict) -> list[str]:
    """The fields where two configs differ, in `have`'s order then the rest."""
    keys = list(have) + [k for k in want if k not in have]
    return [k for k in keys if have.get(k, "(absent)") != want.get(k, "(absent)")]


def _holder(path: Path) -> str:
    """Who holds the flock on `path`, from /proc/locks (Linux): 'process 1234', or 'another process'."""
    try:
        st = path.stat()
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and int(parts[5].rsplit(":", 1)[1]) == st.st_ino:
                    return f"process {parts[4]}"
    except (OSError, ValueError, IndexError):
        pass
    return "another process"


class ResultStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._done: tuple[tuple[int, int], set[str]] | None = None  # (file size and mtime, ids) of the last read
        self._fd: int | None = None  # the locked file, while this store is open for append

    # ------------------------------------------------------------ reading

    def records(self) -> tuple[list[dict], list[str]]:
        """(valid records in file order, one warning per unreadable line); header and config lines are not records."""
        if not self.path.exists():
            return [], []
        return self._parse(self.path.read_bytes())[0:2]

    @staticmethod
    def _parse(data: bytes) -> tuple[list[dict], list[str], list[dict]]:
        """(records, warnings, header and config lines) of the store's bytes, read once by whoever needs them."""
        out, warnings, meta = [], [], []
        for n, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                warnings.append(f"line {n}: not UTF-8 text; skipped")
                continue
            try:
                rec = _json(raw)
            except ValueError as e:
                warnings.append(f"line {n}: not valid JSON ({e}); skipped")
                continue
            if isinstance(rec, dict) and (HEADER in rec or CONFIG in rec):
                meta.append(rec)
                continue
            if not isinstance(rec, dict) or "id" not in rec:
                warnings.append(f"line {n}: not a result record; skipped")
                continue
            out.append(rec)
        return out, warnings, meta

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

    def header(self) -> dict | None:
        """The header record, or None for a missing or empty file (checked: see check)."""
        return self._check(self._read())[0]

    def configs(self) -> list[dict]:
        """The configs whose cells the store holds: the header's, then those added by --append-config."""
        header, extra = self._check(self._read())
        return ([header["config"]] if header else []) + extra

    # ------------------------------------------------------------ checking

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes() if self.path.is_file() else b""
        except OSError as e:
            raise LengthwiseError(f"cannot read {self.path}: {e.strerror or e}") from None

    def _check(self, data: bytes) -> tuple[dict | None, list[dict]]:
        """(header, added configs) of a store's bytes; refuses, before any work, a file that is not a store:
        appending would bury its content, and cutting an unfinished-looking last line would lose it."""
        if not data.strip():
            return None, []  # new or empty
        if b"\n" not in data and data.startswith(b'{"' + HEADER.encode()):
            try:
                _json(data)
            except ValueError:
                return None, []  # a header cut short by a kill before any cell: written again
        first = data.split(b"\n", 1)[0]
        try:
            head = _json(first)
        except ValueError:
            head = None
        if not (isinstance(head, dict) and HEADER in head):
            if isinstance(head, dict) and "id" in head and "score" in head:
                raise LengthwiseError(
                    f"{self.path} was written by an older lengthwise (no header line): its cells were keyed without "
                    "the model's hash, dtype and device, so it cannot be resumed; write to a new --output "
                    "(lengthwise report still reads it)")
            raise LengthwiseError(f"{self.path} is not an eval results store (its first line is not a lengthwise "
                                  "store header): write the results to a new file")
        fmt = head.get(HEADER)
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT or not isinstance(head.get("config"), dict):
            raise LengthwiseError(f"{self.path} has a store header of format {fmt!r} that this lengthwise "
                                  f"({_version()}, format {FORMAT}) cannot read: use a newer lengthwise, or a new --output")
        tail = data[data.rfind(b"\n") + 1:]
        if tail.strip() and not tail.startswith(_STARTS):
            raise LengthwiseError(f"{self.path} ends in a line that is not a result record: remove that line, "
                                  "or write the results to a new file")
        meta = self._parse(data)[2]
        extra = [m[CONFIG] for m in meta[1:] if CONFIG in m and isinstance(m[CONFIG], dict)]
        return head, extra

    def check(self, config: dict | None = None, append_config: bool = False) -> None:
        """Refuse a file that is not a store, a store another process is writing, and (given `config`) a store of
        another config unless append_config. Reads only: nothing is written."""
        head, extra = self._check(self._read())
        if self._fd is None and self.path.is_file():
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise LengthwiseError(f"cannot read {self.path}: {e.strerror or e}") from None
            self._lock(fd, probe=True)
        if config is None or head is None:
            return
        want = json.loads(json.dumps(config))
        if want in [head["config"], *extra] or append_config:
            return
        diff = config_diff(head["config"], want)
        shown = "; ".join(f"{k} is {json.dumps(head['config'].get(k))} there, {json.dumps(want.get(k))} here"
                          for k in diff[:3])
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise LengthwiseError(f"{self.path} holds cells of another config ({shown}{more}): write to a new --output, "
                              "or pass --append-config to keep both configs in this store")

    # ------------------------------------------------------------ writing

    def _lock(self, fd: int, probe: bool = False) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LengthwiseError(f"{self.path} is being written by {_holder(self.path)}: one writer per store; "
                                      "wait for it to finish, or write to another --output") from None
            raise LengthwiseError(f"cannot lock {self.path}: {e.strerror or e}") from None
        if probe:
            os.close(fd)  # closing the descriptor drops the lock
        else:
            self._fd = fd

    def open_for_append(self, config: dict | None = None, append_config: bool = False) -> None:
        """Lock the store, check it (config as in check), write its header if it is new, and end it cleanly: a
        partial last line left by a killed run is cut, a whole record that lost its newline keeps it."""
        if self._fd is None:
            self.check(config, append_config)  # before anything is created or locked
            if not self.path.parent.is_dir():
                raise LengthwiseError(f"cannot write {self.path}: directory {self.path.parent} does not exist")
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise LengthwiseError(f"cannot write {self.path}: {e.strerror or e}") from None
            self._lock(fd)
        try:
            self._settle(config, append_config)
        except BaseException:
            self.close()
            raise

    def _settle(self, config: dict | None, append_config: bool) -> None:
        with open(self._fd, "rb+", closefd=False) as f:
            data = f.read()
            head, extra = self._check(data)  # again, under the lock: another writer may have gone first
            if head is None:
                f.seek(0)
                f.truncate()
                f.write(self._line({HEADER: FORMAT, "lengthwise": _version(), "config": config or {}}))
            else:
                if data and not data.endswith(b"\n"):
                    cut = data.rfind(b"\n") + 1
                    try:
                        _json(data[cut:])
                        f.write(b"\n")  # a whole record (the file pointer is at the end)
                    except ValueError:
                        f.truncate(cut)
                        f.seek(cut)
                if config is not None:
                    want = json.loads(json.dumps(config))
                    if want not in [head["config"], *extra]:
                        if not append_config:
                            self.check(want)  # raises: names the differing field
                        f.write(self._line({CONFIG: want}))
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _line(obj: dict) -> bytes:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")

    def close(self) -> None:
        """Release the writer's lock."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise LengthwiseError(f"cannot append to {self.path}: {e.strerror or e}") from None
