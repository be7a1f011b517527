"""The one guarded path for the files lmdistill reads and writes.

Every file a user names (data, configs, model folders, output files) is checked here before it is opened, and
every operating-system error on the way becomes ONE line that names the path, says what went wrong in words
(permission, no space left, a folder where a file was expected, a pipe or device, a missing parent folder) and
what to do: :class:`~lmdistill.errors.LmdistillError`, exit code 2 in the CLI, no traceback.

- :func:`readable_file` / :func:`readable_folder`: an input exists, is of the right kind (a regular file is never
  a FIFO or device: those are refused without being opened), and can be read;
- :func:`writable_file`: an output file's folder exists and is writable, and the file is new (or ``overwrite``);
- :func:`os_error`: the one-line message of an ``OSError`` for a path;
- :func:`guard`: a context manager that turns any ``OSError`` inside it into that line;
- :func:`write_text`: text written atomically (a temporary sibling renamed into place).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from lmdistill.errors import LmdistillError

MESSAGE_LIMIT = 300
"""An error line is at most about this many characters; longer lists are cut with a count."""


def short_list(items, limit: int = 8, sep: str = ", ") -> str:
    """``a, b, c`` or, for long lists, ``a, b, ..., h (and 12 more)``."""
    items = [str(i) for i in items]
    if len(items) <= limit:
        return sep.join(items)
    return sep.join(items[:limit]) + f"{sep}... (and {len(items) - limit} more)"


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """One line of at most about ``limit`` characters: a longer one keeps its start (what is wrong) and its end
    (what to do) and says how much of the middle was cut."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head, tail = (limit - 30) * 2 // 3, (limit - 30) // 3
    return (
        f"{text[:head].rstrip()} [... {len(text) - head - tail} characters cut ...] {text[-tail:].lstrip()}"
    )


_WHAT = {
    errno.ENOSPC: ("no space left on the device", "free space or choose a folder on another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or choose a folder on another disk"),
    errno.EACCES: ("permission denied", "fix the permissions or choose another path"),
    errno.EPERM: (
        "permission denied (operation not permitted)",
        "fix the permissions or choose another path",
    ),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.ENOENT: ("no such file or folder", "check the path (relative paths start at the current folder)"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("it is a folder, not a file", "give a file"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or close other programs"),
    errno.EIO: ("an input/output error (a failing disk?)", "check the disk"),
}


def os_error(e: OSError, path: str | Path | None = None, key: str | None = None) -> LmdistillError:
    """The one-line error of an ``OSError``: about the file it names, else ``path``."""
    where = e.filename or path or "a file"
    what, fix = _WHAT.get(e.errno, (e.strerror or type(e).__name__, "check the path"))
    prefix = f"{key}: " if key else ""
    return LmdistillError(clip(f"{prefix}'{where}': {what}; {fix}"))


@contextlib.contextmanager
def guard(path: str | Path | None = None, key: str | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into one line naming ``path`` (and the config ``key``)."""
    try:
        yield
    except OSError as e:
        raise os_error(e, path, key) from None


def _stat(path: Path, key: str) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_error(e, path, key) from None


def readable_file(path: str | Path, key: str, what: str = "file", error: type = LmdistillError) -> Path:
    """``path`` as a Path, after checking it is an existing, readable regular file (not a folder, pipe or device;
    those are refused without being opened). Problems raise ``error`` (a LmdistillError class)."""
    try:
        return _readable_file(Path(path).expanduser(), key, what)
    except LmdistillError as e:
        raise (e if type(e) is error else error(str(e))) from None


def _readable_file(p: Path, key: str, what: str) -> Path:
    st = _stat(p, key)
    if st is None:
        raise LmdistillError(
            clip(f"{key}: {what} '{p}' not found (paths are relative to the current directory)")
        )
    if stat.S_ISDIR(st.st_mode):
        raise LmdistillError(clip(f"{key}: '{p}' is a folder; give a {what}"))
    if not stat.S_ISREG(st.st_mode):
        kind = "a pipe" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise LmdistillError(clip(f"{key}: '{p}' is {kind}, not a regular file; give a {what} on disk"))
    if not os.access(p, os.R_OK):
        raise LmdistillError(clip(f"{key}: permission denied reading '{p}'; make it readable or copy it"))
    return p


def readable_folder(path: str | Path, key: str, what: str = "folder") -> Path:
    """``path`` as a Path, after checking it is an existing folder whose files can be listed and read."""
    p = Path(path).expanduser()
    st = _stat(p, key)
    if st is None:
        raise LmdistillError(clip(f"{key}: {what} '{p}' not found"))
    if not stat.S_ISDIR(st.st_mode):
        raise LmdistillError(clip(f"{key}: '{p}' is a file, not a {what}"))
    if not os.access(p, os.R_OK | os.X_OK):
        raise LmdistillError(clip(f"{key}: permission denied reading the {what} '{p}'; make it readable"))
    return p


def writable_file(path: str | Path, key: str, *, overwrite: bool = False) -> Path:
    """``path`` as a Path, after checking that it can be written: its folder exists and is writable, it is not a
    folder or special file, and it does not exist yet unless ``overwrite``. Checked BEFORE any work is done."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    st = _stat(parent, key)
    if st is None:
        raise LmdistillError(clip(f"{key}: the folder '{parent}' of '{p}' does not exist; create it first"))
    if not stat.S_ISDIR(st.st_mode):
        raise LmdistillError(clip(f"{key}: '{parent}' is a file, so '{p}' cannot be written inside it"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LmdistillError(
            clip(f"{key}: permission denied writing into '{parent}'; choose a writable folder")
        )
    own = _stat(p, key)
    if own is not None:
        if stat.S_ISDIR(own.st_mode):
            raise LmdistillError(clip(f"{key}: '{p}' is a folder; give a file name"))
        if not stat.S_ISREG(own.st_mode):
            raise LmdistillError(clip(f"{key}: '{p}' is a pipe or device; give a regular file name"))
        if not overwrite:
            raise LmdistillError(
                clip(
                    f"{key}: '{p}' exists and lmdistill does not overwrite it; give a new name or pass --overwrite"
                )
            )
        if not os.access(p, os.W_OK):
            raise LmdistillError(clip(f"{key}: permission denied writing '{p}'"))
    return p


def write_text(path: str | Path, text: str, key: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically: a temporary sibling, then renamed (a failure leaves no half file)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise os_error(e, p, key) from None
    return p
