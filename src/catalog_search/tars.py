"""WebDataset tar shards, written and read with the standard library.

The files are in webdataset's format (members `<key>.<ext>`; a sample is the run of consecutive
members that share a key), written the way its TarWriter writes them (extensions sorted, mode 0o444,
a fixed mtime: the same samples give the same bytes), so `webdataset.WebDataset`
reads them (tests/test_shards.py proves it). The library is not imported here because
`import webdataset` imports torch (~10 s), and ingest/clean/shard stay free of torch.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterator

from catalog_search.catalog import CatalogError


def _split_name(name: str) -> tuple[str, str]:
    """`dir/abc.seg.jpg` -> (`dir/abc`, `seg.jpg`): the key ends at the basename's first dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def is_url(location: str | Path) -> bool:
    """`s3://bucket/...`, `gs://...`, `https://...`: read through fsspec, streamed, never copied locally."""
    return "://" in str(location)


def read_samples(path: Path | str) -> Iterator[dict]:
    """Samples of one tar: `{"__key__", "__url__", ext: bytes, ...}`, in file order. `path` is a
    local file or an fsspec URL (s3:// needs s3fs; credentials and AWS_ENDPOINT_URL from the environment)."""
    if is_url(path):
        import fsspec

        try:
            with fsspec.open(str(path), "rb") as f:
                yield from _read_tar(f, str(path))
        except FileNotFoundError:
            raise CatalogError(f"{path}: shard not found; check shard.read_from in params.yaml and that the "
                               "shards were uploaded (catalog-search push-shards)") from None
        return
    if not Path(path).is_file():
        raise CatalogError(f"{path}: shard not found; check data.path and data.webdataset.urls in params.yaml.")
    with open(path, "rb") as f:
        yield from _read_tar(f, str(path))


def _read_tar(stream, path: str) -> Iterator[dict]:
    sample: dict = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if sample and key != sample["__key__"]:
                    yield sample
                    sample = {}
                sample.setdefault("__key__", key)
                sample["__url__"] = str(path)
                sample[ext] = tar.extractfile(member).read()
    except tarfile.TarError as e:
        raise CatalogError(f"{path}: not a readable tar file ({e}); re-create the shard or remove it from the list.") from e
    if sample:
        yield sample


class ShardWriter:
    """Write samples to `pattern % index` tars of at most `maxcount` samples each."""

    def __init__(self, pattern: str, maxcount: int):
        self.pattern, self.maxcount = pattern, maxcount
        self.written: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def write(self, sample: dict) -> None:
        if self._tar is None or self._count >= self.maxcount:
            self._next()
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = sample[ext]
            info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "bigdata", "bigdata"
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1

    def _next(self) -> None:
        self.close()
        path = self.pattern % len(self.written)
        self._tar = tarfile.open(path, "w|")
        self.written.append(path)
        self._count = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

