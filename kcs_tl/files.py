"""Result folders written atomically, and input files read with errors that name the file.

Every writer of a result (``Subnetwork.save``, the ``kcs-tl`` commands) goes
through ``result_folder``: it writes into a fresh hidden sibling folder and, on
a clean exit, puts that folder in place in one step. On Linux
``renameat2(RENAME_EXCHANGE)`` swaps the new folder with the old one
atomically; elsewhere two renames do it, and a crash between them leaves the
old result under a hidden name that the next ``check_writable`` or
``existing_result`` puts back. A process killed at any moment therefore leaves
the complete old result or the complete new one, never a mix.

Temporary folders are hidden and named ``.<name>.kcs_tl-tmp-<pid>@<host>-*``
(``-old-`` for a fallback's old copy); they are never read as results and are
removed once their process is gone. A finished result folder holds the marker
file ``.kcs_tl``: ``overwrite`` replaces only folders that hold it, so a folder
of the user's own files is never deleted.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from kcs_tl.validate import InputValueError

MARKER = ".kcs_tl"
"""Written last into every result folder: kcs_tl wrote this folder and may replace it."""
_MARKER_TEXT = json.dumps({"format": "kcs_tl.result/1"}) + "\n"


# -- names of temporaries ---------------------------------------------------------


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _prefix(path: Path, kind: str) -> str:
    """``.<name>.kcs_tl-<kind>-<pid>@<host>-``: hidden, and traceable to the process that made it."""
    return f".{path.name}.kcs_tl-{kind}-{os.getpid()}@{_host()}-"


_TEMPORARY = re.compile(r"^\..+\.kcs_tl-(tmp|old)-(\d+)@(.+?)-[^-]*$")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary of an unfinished (or interrupted) write, not a result."""
    return _TEMPORARY.match(Path(path).name) is not None


def _leftovers(path: Path, kind: str) -> list[Path]:
    """Temporaries of ``path`` made on this host by processes that no longer run."""
    if not path.parent.is_dir():
        return []
    found = []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.kcs_tl-{kind}-(\d+)@{re.escape(_host())}-[^-]*$")
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if m and not _alive(int(m.group(1))):
            found.append(entry)
    return sorted(found)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(path: str | os.PathLike) -> None:
    """Put back a result that a crash left under a hidden name, and drop dead writers' temporaries."""
    path = Path(path)
    if not os.path.lexists(path):
        old = _leftovers(path, "old")
        if old:
            os.rename(old[-1], path)
    for leftover in _leftovers(path, "old") + _leftovers(path, "tmp"):
        _remove(leftover)


# -- checks -----------------------------------------------------------------------


def _probe(folder: Path, name: str) -> None:
    """Create ``folder`` (and parents) and check that something can be written inside it.

    The probe is named like a temporary of ``folder / name``, so a kill during it leaves nothing
    that could be mistaken for a result (and the next write of ``name`` removes it).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"cannot create folder {folder}: a file is in the way") from None
    except OSError as err:
        raise type(err)(f"cannot create folder {folder}: {err.strerror or err}") from None
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=_prefix(folder / name, "tmp")))
    except OSError as err:
        raise type(err)(f"cannot write in folder {folder}: {err.strerror or err}") from None


def writable_folder(path: str | os.PathLike) -> Path:
    """Create folder ``path`` if needed and check that files can be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder")
    _probe(path, "probe")
    return path


def _target(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail now, before any expensive work, unless a result folder can be written at ``path``.

    Refused: a file in the way, a folder that cannot be created or written, a
    folder that already holds a result (unless ``overwrite``), and a folder
    holding files that kcs_tl did not write (always: they are the user's).
    """
    path = _target(path)
    if is_temporary(path):
        raise InputValueError(f"{path} is a temporary folder of an interrupted write, not a result folder")
    recover(path)
    if os.path.lexists(path):
        if not path.is_dir():
            raise FileExistsError(f"{path} is a file, not a folder; choose another output folder")
        if any(path.iterdir()):
            if not (path / MARKER).is_file():
                raise FileExistsError(f"{path} holds files that kcs_tl did not write; kcs_tl never replaces "
                                      "them, even with overwrite: choose another (new or empty) folder")
            if not overwrite:
                raise FileExistsError(f"{path} already holds a result; choose another folder or pass "
                                      "overwrite=True (--overwrite on the command line) to replace it")
    _probe(path.parent, path.name)
    return path


# -- writing ----------------------------------------------------------------------


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    status = Path("/proc/self/status")
    if status.is_file():  # Linux
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _finish(path: Path) -> None:
    """Give a file, or a folder and everything in it, the usual permissions and flush it to disk.

    Usual: what a plain ``open``/``mkdir`` gives (0644 / 0755 under umask 022), where
    ``mkstemp``/``mkdtemp`` (and writers built on them, such as safetensors) give 0600 / 0700.
    """
    umask = _umask()
    paths = ([p for p in sorted(path.rglob("*")) if not p.is_symlink()] + [path]) if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
        _fsync(p)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot put {a} in place of {b}: {os.strerror(err)}")


def _put_in_place(new: Path, path: Path) -> None:
    """Make ``new`` the folder at ``path`` in one step; the old folder (if any) is then removed."""
    if not os.path.lexists(path) or (path.is_dir() and not any(path.iterdir())):
        os.rename(new, path)  # atomic; replaces an empty folder
        return
    if _exchange(new, path):
        _remove(new)  # now the old result
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path, "old")))
    os.rmdir(old)
    os.rename(path, old)  # a crash from here until the next rename: recover() puts ``old`` back
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    _remove(old)


@contextmanager
def result_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write a result folder atomically: write into the yielded folder; a clean exit puts it at ``path``.

    ``path`` is checked first (``check_writable``). On an exception nothing at
    ``path`` changes and the temporary folder is removed. Files and folders get
    the usual permissions (0644 / 0755 under umask 022).
    """
    path = check_writable(path, overwrite)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path, "tmp")))
    try:
        yield tmp
        (tmp / MARKER).write_text(_MARKER_TEXT)
        _finish(tmp)
        check_writable(path, overwrite)  # nothing appeared there meanwhile
        _put_in_place(tmp, path)
        _fsync(path.parent)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Write one file atomically: write to the yielded path; a clean exit renames it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path, "tmp"))
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _finish(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- reading ----------------------------------------------------------------------


def existing_result(path: str | os.PathLike) -> Path:
    """The folder to read a result from: puts back one a crash hid, refuses a temporary."""
    path = _target(path)
    if is_temporary(path):
        raise InputValueError(f"{path} is a temporary folder of an interrupted write, not a result")
    recover(path)
    return path


def _file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file holding {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a file holding {what}")
    return path


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of file ``path`` (``what`` it should hold goes into every error)."""
    path = _file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputValueError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                              f"expected {what}") from None


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON value in file ``path``; errors name the file, the line and ``what`` it should hold."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputValueError(f"{path}: not JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                              f"expected {what}") from None


def read_safetensors(path: str | os.PathLike, what: str) -> dict:
    """The tensors in safetensors file ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _file(path, what)
    try:
        return load_file(path)
    except (SafetensorError, ValueError, OSError) as err:
        raise InputValueError(f"{path} is not a readable safetensors file ({err}); expected {what}") from None
