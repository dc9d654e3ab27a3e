"""Output files: checked before any work starts, written whole or not at all.

Shared by the CLI (embeddings, completions) and the report (plots, markdown): a failed run never leaves a
half-written file and never loses the earlier content of the one it would replace.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LengthwiseError


def _probe(folder: Path, name: str, what: Path) -> None:
    """The real test: can a file be created in `folder` (permissions, read-only file systems)?"""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LengthwiseError(f"cannot write {what}: {e.strerror or e}") from None


def check_output(out: Path, suffixes: tuple[str, ...], hint: str, source: Path | None = None) -> None:
    """Fail before any model is loaded if the file OUT cannot be written, or would replace the input `source`."""
    out = Path(out)
    try:
        out.exists()
    except OSError as e:  # a name past the system's limit
        raise LengthwiseError(f"cannot write {str(out)[:60]}...: {e.strerror}") from None
    if source is not None and same_file(source, out):
        raise LengthwiseError(f"cannot write {out}: it is the input file, which it would replace; choose another output")
    if out.is_dir():
        raise LengthwiseError(f"cannot write {out}: it is a directory")
    if out.suffix.lower() not in suffixes:
        raise LengthwiseError(f"cannot write {out}: unknown output type {out.suffix or '(no extension)'}; {hint}")
    parent = out.parent
    if not parent.exists():
        raise LengthwiseError(f"cannot write {out}: directory {parent} does not exist: create it "
                              f"(mkdir -p {parent}) or choose another path")
    if not parent.is_dir():
        raise LengthwiseError(f"cannot write {out}: {parent} is not a directory")
    if out.exists() and not out.stat().st_mode & 0o222:
        # the mode, not os.access: root may write anything, and a container's user usually is root
        raise LengthwiseError(f"cannot write {out}: the existing file is read-only (chmod u+w it, or choose another name)")
    _probe(parent, out.name, out)


def check_folder(folder: Path) -> None:
    """Fail before anything is written if files cannot go into `folder` (made, with its parents, if missing)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LengthwiseError(f"cannot write into {folder}: it is a file, not a directory")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise LengthwiseError(f"cannot write into {folder}: {existing} is a file, not a directory")
    _probe(existing or Path("."), "lengthwise", folder)


def same_file(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() or (Path(b).exists() and os.path.samefile(a, b))
    except OSError:
        return False


@contextmanager
def atomic_write(out: Path, mode: str) -> Iterator:
    """Write to a temp file beside OUT, then rename it over OUT: never a half-written OUT."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if out.exists():
            os.chmod(tmp, out.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, out)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # disk full, quota, ...: OUT keeps its earlier content
            raise LengthwiseError(f"cannot write {out}: {e.strerror or e}") from e
        raise
