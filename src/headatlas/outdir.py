"""Output folders and files: checked before any work, written atomically, locked against a second scan.

- :func:`prepare_out` checks a scan's ``--out`` folder before the model is loaded: an existing file, a
  folder that cannot be written (read-only, ``/proc/...``, a parent that is a file) fail at once with
  :class:`~headatlas.errors.OutputError` instead of after the first detector.
- :func:`scan_lock` makes one scan own a folder: a lock file holds the owner's pid (with its host and the
  process start time, so a reused pid is not mistaken for the owner). A second scan into the same folder
  refuses with a message naming the owner; a lock left behind by a dead process (kill -9, power loss) is
  detected and taken over. While holding the lock, temp files that a killed writer left are removed.
- :func:`atomic_write_text` writes one file through a temp file + ``os.replace``; the temp file is removed
  on every exit path (exceptions, Ctrl-C, SIGTERM in the CLI). :func:`write_atlas_pair` writes
  ``atlas.json`` and ``atlas.html`` so that the HTML is never older than the JSON: both are written to temp
  files first (the JSON first, so the HTML's mtime is never earlier), then the HTML replaces the old HTML,
  then the JSON replaces the old JSON. A crash between the two replaces leaves a new HTML beside the old
  JSON, never an old HTML beside a new JSON.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import InputTypeError, OutputError

LOCK_NAME = ".headatlas.lock"
_HELD: set[tuple[str, int]] = set()   # (folder, thread) pairs this process holds a scan lock for
TEMP_SUFFIX = ".tmp"
_SYSTEM_ROOTS = ("/proc", "/sys", "/dev")


def _as_path(path: Any, what: str) -> Path:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"{what} must be a path (a string or pathlib.Path), got {type(path).__name__} {path!r:.40}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise OutputError(f"{what} is empty; pass a folder such as atlas-out")
    if "\0" in text:
        raise OutputError(f"{what} contains a NUL character: {text!r:.60}")
    return Path(text).expanduser()


def _system_path(p: Path) -> bool:
    resolved = str(p.resolve(strict=False))
    return any(resolved == root or resolved.startswith(root + "/") for root in _SYSTEM_ROOTS)


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_folder_path(path: Any, *, what: str = "--out") -> Path:
    """The checks of :func:`prepare_out` that need no write: :class:`OutputError` when ``path`` is a file, lies
    under ``/proc``, ``/sys`` or ``/dev``, or has a file among its parents. Creates nothing."""
    p = _as_path(path, what)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file; pass a folder")
    if _system_path(p):
        raise OutputError(f"{what} {p} is inside a system folder ({', '.join(_SYSTEM_ROOTS)}); pass a folder of your own")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{what} {p}: {parent} is a file, not a folder; pass another path")
            break
    return p


def prepare_out(path: Any, *, what: str = "--out") -> Path:
    """Check (and create) the output folder ``path`` before any work starts; returns it as a ``Path``.

    :class:`OutputError` when it is a file, lies under ``/proc``, ``/sys`` or ``/dev``, has a file among its
    parents, or cannot be created or written (a probe file is created and removed)."""
    p = check_folder_path(path, what=what)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {p}: cannot create the folder ({_why(exc)}); pass a folder you can write to") from None
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".headatlas-probe.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise OutputError(f"{what} {p}: cannot write in this folder ({_why(exc)}); pass a folder you can write to") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return p


def prepare_out_file(path: Any, *, what: str = "--out") -> Path:
    """Check an output *file* path before any work: not a folder, and its folder can be written."""
    p = _as_path(path, what)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder; pass a file path such as {p / 'report.html'}")
    prepare_out(p.parent if str(p.parent) else Path("."), what=f"{what} {p}: its folder")
    return p


# ----- atomic writes ---------------------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_temp(path: Path, text: str) -> Path:
    """``text`` in a fsynced temp file beside ``path`` (same folder, so ``os.replace`` is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _check_target(path: Any, what: str) -> Path:
    p = _as_path(path, what)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder; pass a file path such as {p / 'atlas.json'}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {p}: {parent} is a file, not a folder")
            break
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {p}: cannot create its folder ({_why(exc)})") from None
    return p


def atomic_write_text(path: Any, text: str, *, what: str = "output file") -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``: a crash mid-write leaves
    the previous file intact, and the temp file is removed on every exit path. :class:`OutputError` when
    ``path`` is a folder or cannot be written."""
    p = _check_target(path, what)
    try:
        tmp = _write_temp(p, text)
    except OSError as exc:
        raise OutputError(f"cannot write {p} ({_why(exc)}); pass a path you can write to") from None
    try:
        os.replace(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {p} ({_why(exc)}); pass a path you can write to") from None
        raise
    return p


def write_atlas_pair(json_path: Any, json_text: str, html_path: Any, html_text: str) -> tuple[Path, Path]:
    """Write the atlas JSON and its HTML report so that the HTML is never older than the JSON (see the module
    docstring); both temp files are removed on every exit path."""
    jp, hp = _check_target(json_path, "atlas JSON"), _check_target(html_path, "atlas HTML")
    tmp_json: Path | None = None
    tmp_html: Path | None = None
    try:
        tmp_json = _write_temp(jp, json_text)
        tmp_html = _write_temp(hp, html_text)
        os.replace(tmp_html, hp)
        tmp_html = None
        os.replace(tmp_json, jp)
        tmp_json = None
    except OSError as exc:
        raise OutputError(f"cannot write {jp.parent} ({_why(exc)}); pass a folder you can write to") from None
    finally:
        for tmp in (tmp_html, tmp_json):
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return jp, hp


def remove_stale_temps(folder: Path, *, older_than_s: float = 0.0) -> list[Path]:
    """Remove temp files that a killed writer left in ``folder`` and ``folder/partial`` (``.<name>.*.tmp``).
    Call it only while holding :func:`scan_lock`: no other headatlas writer is then active there."""
    removed = []
    now = time.time()
    for sub in (folder, folder / "partial"):
        if not sub.is_dir():
            continue
        for tmp in sub.glob(f".*{TEMP_SUFFIX}"):
            try:
                if tmp.is_file() and now - tmp.stat().st_mtime >= older_than_s:
                    tmp.unlink()
                    removed.append(tmp)
            except OSError:
                continue
    return removed


# ----- the scan lock ---------------------------------------------------------------------------------------

def _start_ticks(pid: int) -> str:
    """The process start time in clock ticks since boot (Linux ``/proc/<pid>/stat`` field 22), or ""."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def _lock_text() -> str:
    pid = os.getpid()
    return f"pid={pid}\nhost={socket.gethostname()}\nstart={_start_ticks(pid)}\ntime={time.time():.0f}\n"


def read_lock(lock: Path) -> dict[str, str]:
    """The fields of a lock file (``pid``, ``host``, ``start``, ``time``); {} when unreadable."""
    try:
        text = lock.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def lock_is_stale(fields: dict[str, str]) -> bool:
    """A lock whose owner is gone: its pid is dead, or alive but started at another time (pid reused).
    A lock from another host, or one we cannot read, is never called stale (we cannot tell)."""
    if fields.get("host") not in (None, socket.gethostname()):
        return False
    try:
        pid = int(fields.get("pid", ""))
    except ValueError:
        return False
    if not _pid_alive(pid):
        return True
    start = fields.get("start", "")
    now_start = _start_ticks(pid)
    return bool(start and now_start and start != now_start)


def _busy(folder: Path, lock: Path, fields: dict[str, str]) -> OutputError:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(fields.get("time", "0") or 0)))
    return OutputError(f"--out {folder} is in use by another headatlas scan (pid {fields.get('pid', '?')} on "
                       f"{fields.get('host', '?')}, since {since}); wait for it to finish or choose another --out "
                       f"(if no scan is running, delete {lock})")


def _acquire_flock(folder: Path, lock: Path) -> int | None:
    """Open and ``flock`` the lock file: the kernel drops the lock when its process dies, however it dies,
    so a lock file left by a dead scan is free at once. Returns the open descriptor, or None where flock is
    not available (then the pid check of :func:`_acquire_pid` decides)."""
    try:
        import fcntl
    except ImportError:
        return None
    for _ in range(10):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, lock, read_lock(lock)) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise
        try:  # the file we locked must still be the one at the path (an owner removes it on exit)
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        fields = read_lock(lock)
        if fields and not lock_is_stale(fields) and fields.get("pid") != str(os.getpid()):
            # locked by nobody, yet its pid is alive: a scan on a filesystem where flock does not reach across
            # machines, or a reused pid. Trust the live pid only when it is a headatlas lock on this host.
            if fields.get("host") != socket.gethostname():
                os.close(fd)
                raise _busy(folder, lock, fields)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _lock_text().encode(), 0)
        os.fsync(fd)
        return fd
    raise OutputError(f"--out {folder}: could not take the lock {lock}; another scan keeps taking it")


def _create_lock(lock: Path) -> bool:
    """Create ``lock`` with our pid, atomically (a complete file or none): False when it exists."""
    tmp = _write_temp(lock, _lock_text())
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _acquire_pid(folder: Path, lock: Path) -> None:
    """Without flock: create the lock file exclusively; a lock whose pid is dead (or reused) is taken over."""
    for _ in range(5):
        if _create_lock(lock):
            return
        fields = read_lock(lock)
        if not fields and lock.exists():
            raise OutputError(f"--out {folder} holds an unreadable lock file {lock}; if no scan is running there, "
                              "delete it and run again")
        if fields and not lock_is_stale(fields):
            raise _busy(folder, lock, fields)
        aside = lock.with_name(f"{LOCK_NAME}.stale.{os.getpid()}{TEMP_SUFFIX}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(lock, aside)
        if lock_is_stale(read_lock(aside)) or not aside.exists():
            with contextlib.suppress(OSError):
                os.unlink(aside)
        else:  # another taker won the race and wrote a live lock: put it back and report it
            with contextlib.suppress(OSError):
                os.link(aside, lock)
            with contextlib.suppress(OSError):
                os.unlink(aside)
    raise OutputError(f"--out {folder}: could not take the lock {lock}; another scan keeps taking it")


@contextlib.contextmanager
def scan_lock(out: Any) -> Iterator[Path]:
    """Hold ``out/.headatlas.lock`` for the duration of a scan (see the module docstring). Yields the lock's path.

    :class:`OutputError` when another live scan holds it; a lock left by a dead process is taken over. Temp
    files that a killed writer left in the folder are removed once the lock is held."""
    folder = prepare_out(out)
    lock = folder / LOCK_NAME
    key = (str(folder.resolve()), threading.get_ident())
    if key in _HELD:  # re-entrant within one thread (the CLI locks before loading, then scan() locks again)
        yield lock
        return
    try:
        fd = _acquire_flock(folder, lock)
        if fd is None:
            _acquire_pid(folder, lock)
    except OSError as exc:
        raise OutputError(f"--out {folder}: cannot create the lock file ({_why(exc)})") from None
    _HELD.add(key)
    try:
        remove_stale_temps(folder)
        yield lock
    finally:
        _HELD.discard(key)
        if read_lock(lock).get("pid") == str(os.getpid()):
            with contextlib.suppress(OSError):
                os.unlink(lock)
        if fd is not None:
            os.close(fd)
