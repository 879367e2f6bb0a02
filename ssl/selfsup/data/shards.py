"""Sharded datasets (docs/data.md): the WebDataset tar layout with a wids-compatible index, written from any of our
datasets by ``selfsup-shards write`` and read by random access, checked against the manifest as it is read.

A shard directory holds, for each split ``<split>`` (the dataset's ``train_dir`` / ``val_dir`` names)::

    manifest.json                   format, classes, every split's sample count and its index's sha256 (written last)
    <split>.json                    wids index ("wids-shard-index-v1"): shardlist of {url, nsamples, filesize, md5sum},
                                    plus each shard's member table and that table's sha256
    <split>/<split>-000000.tar      uncompressed USTAR tar: members <key>.<ext> (the image's original bytes, or a
                                    lossless PNG of an in-memory image) and <key>.cls (the label as text)
    <split>/<split>-000000.idx.npy  the member table: data offset, size, crc32 and label of each sample

Sample ``i`` of a split is the ``i``-th sample written, in the source's order, so a run from shards sees the same
images in the same order as a run from the ImageFolder they were written from. Reading checks what can be checked
cheaply: at open, every shard's presence and size and every member table's sha256; at each read, the member's tar
header name and its crc32 — so a missing, truncated or damaged shard, or a manifest that does not match, stops a run
in one line naming the shard and member.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import mmap
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, encode_png

log = logging.getLogger(__name__)

FORMAT = "selfsup-shards-v1"
MANIFEST = "manifest.json"
MEMBERS = np.dtype([("offset", "<i8"), ("size", "<i8"), ("crc32", "<u4"), ("label", "<i8")])
EXTRA_SPLIT = "eval_train"  # a third split (STL-10's labelled train set for evaluation)


def _sha256(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path, key: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{key}: {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{key}: {path} is not valid JSON ({e})") from None


def is_url(root) -> bool:
    return str(root).startswith(("http://", "https://"))


def is_shard_dir(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds shards written by ``selfsup-shards`` (its manifest), or is an http(s) URL."""
    return is_url(root) or (Path(root) / MANIFEST).is_file()


def cache_dir(url: str) -> Path:
    """Where the shards of ``url`` are kept on this machine: ``$SELFSUP_SHARD_CACHE`` (default
    ``~/.cache/selfsup/shards``) / a digest of the URL."""
    base = Path(os.environ.get("SELFSUP_SHARD_CACHE", Path.home() / ".cache" / "selfsup" / "shards"))
    return base / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def download(url: str, dest: Path, key: str, size: int | None = None, md5: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` through a temporary file (renamed when complete and, given ``size``/``md5``,
    checked), so a cut-off download never leaves a file that looks complete; processes fetching the same file at
    once each write their own temporary file and the same bytes land."""
    import urllib.error
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    digest, n = hashlib.md5(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)
                digest.update(block)
                n += len(block)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(f"{key}: cannot download {url} ({getattr(e, 'reason', e)})") from None
    if (size is not None and n != size) or (md5 is not None and digest.hexdigest() != md5):
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{key}: {url} downloaded as {n} bytes with md5 {digest.hexdigest()}, expected {size} / {md5}")
    os.replace(tmp, dest)
    return dest


def read_manifest(root: str | os.PathLike, key: str = "data.root") -> dict:
    """The manifest of a shard directory or URL (a URL's is fetched again each time: it says what is current)."""
    if is_url(root):
        path = download(f"{str(root).rstrip('/')}/{MANIFEST}", cache_dir(str(root)) / MANIFEST, f"{key}={root}")
    else:
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{key}={root}: no {MANIFEST}: not a shard directory, or its selfsup-shards write did not finish "
                "(the manifest is written last)"
            )
    manifest = _read_json(path, key)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{key}={root}: {MANIFEST} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class ShardImages:
    """One split of a shard directory (or of an http(s) URL serving one) as an image source
    (``selfsup.data.sources``): ``image(i)`` decodes sample i's bytes exactly as
    :class:`~selfsup.data.sources.FileImages` decodes its file (``decode_image``, RGB).

    Shards are memory-mapped lazily in each process (DataLoader workers map their own; nothing open is pickled), so
    any number of workers and processes read them concurrently. From a URL, the manifest, index and member tables are
    fetched when the split is opened and each shard on its first read, into :func:`cache_dir` (checked against the
    index's size and md5); later runs on the machine read the cached copies.
    """

    def __init__(self, root: str | os.PathLike, split: str, key: str = "data.root"):
        self.url = str(root).rstrip("/") if is_url(root) else None
        self.root, self.split, self.key = cache_dir(self.url) if self.url else Path(root), split, key
        self.where = f"{key}={self.url or self.root}"
        manifest = read_manifest(self.url or self.root, key)
        splits = manifest.get("splits", {})
        if split not in splits:
            raise FileNotFoundError(
                f"{self.where}: no split {split!r} in its {MANIFEST} (it holds {sorted(splits)}): set "
                "data.train_dir / data.val_dir to those names"
            )
        index_path = self._fetched(f"{split}.json", splits[split]["sha256"])
        if not index_path.is_file():
            raise FileNotFoundError(f"{self.where}: {index_path.name} is missing (listed in {MANIFEST})")
        if _sha256(index_path) != splits[split]["sha256"]:
            raise ValueError(
                f"{self.where}: {index_path.name} does not match {MANIFEST} (sha256 differs): the shards were "
                "changed after they were written; write them again with selfsup-shards"
            )
        index = _read_json(index_path, key)
        self.classes = list(manifest["classes"])
        self.entries, tables = index["shardlist"], []
        for entry in self.entries:
            shard = self.root / entry["url"]
            if not self.url and not shard.is_file():
                raise FileNotFoundError(
                    f"{self.where}: shard {entry['url']} is missing ({index_path.name} lists "
                    f"{len(index['shardlist'])} shards)"
                )
            size = shard.stat().st_size if shard.is_file() else entry["filesize"]  # a URL's: fetched when read
            if size != entry["filesize"]:
                raise ValueError(
                    f"{self.where}: shard {entry['url']} is {size} bytes, {index_path.name} says "
                    f"{entry['filesize']}: {'truncated' if size < entry['filesize'] else 'replaced'} since it was "
                    "written; copy it again or write the shards again"
                )
            table_path = self._fetched(entry["members"], entry["members_sha256"])
            if not table_path.is_file() or _sha256(table_path) != entry["members_sha256"]:
                raise ValueError(
                    f"{self.where}: member table {entry['members']} of shard {entry['url']} is "
                    f"{'missing' if not table_path.is_file() else 'not the one written (sha256 differs)'}"
                )
            table = np.load(table_path, allow_pickle=False)
            if table.dtype != MEMBERS or len(table) != entry["nsamples"]:
                raise ValueError(
                    f"{self.where}: member table {entry['members']} has {len(table)} rows of {table.dtype}, "
                    f"expected {entry['nsamples']} of {MEMBERS}"
                )
            tables.append(table)
        self.shards = [entry["url"] for entry in self.entries]
        table = np.concatenate(tables) if tables else np.zeros(0, MEMBERS)
        if len(table) != splits[split]["nsamples"]:
            raise ValueError(
                f"{self.where}: split {split} holds {len(table)} samples, {MANIFEST} says {splits[split]['nsamples']}"
            )
        if not len(table):
            raise ValueError(f"{self.where}: split {split} holds no samples")
        self.members = table
        self.shard_of = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
        self.labels = torch.from_numpy(table["label"].astype(np.int64))
        self.ids = np.arange(len(table))  # sample i's member key (data.skip_bad leaves rows out)
        self._digest = splits[split]["sha256"][:20]
        self._maps: dict[int, mmap.mmap] = {}

    def _fetched(self, name: str, sha256: str) -> Path:
        """``root/name``; from a URL, fetched unless the cached copy has the expected sha256."""
        path = self.root / name
        if self.url and not (path.is_file() and _sha256(path) == sha256):
            download(f"{self.url}/{name}", path, self.where)
        return path

    def __len__(self) -> int:
        return len(self.members)

    def __getstate__(self) -> dict:  # spawned workers map the shards themselves
        return {**self.__dict__, "_maps": {}}

    def fingerprint(self) -> str:
        """The split's content: its index's sha256 (which covers every shard's size, md5 and member table)."""
        return f"shards:{self._digest}"

    def _map(self, s: int) -> mmap.mmap:
        m = self._maps.get(s)
        if m is None:
            path, entry = self.root / self.shards[s], self.entries[s]
            if self.url and not (path.is_file() and path.stat().st_size == entry["filesize"]):
                where = f"{self.where}: shard {entry['url']}"
                download(f"{self.url}/{entry['url']}", path, where, entry["filesize"], entry["md5sum"])
            try:
                with open(path, "rb") as f:
                    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (FileNotFoundError, ValueError) as e:  # removed, or emptied, after the split was opened
                where = f"{self.where}: shard {self.shards[s]}"
                raise FileNotFoundError(f"{where} cannot be read ({e})") from None
            self._maps[s] = m
        return m

    def member_name(self, i: int) -> str:
        return f"{int(self.ids[i]):08d}"

    def encoded(self, i: int) -> bytes:
        """Sample i's stored bytes, checked: its tar header names it, and its crc32 is the one written."""
        s, (offset, size, crc, _) = int(self.shard_of[i]), self.members[i]
        m, key = self._map(s), self.member_name(i)
        where = f"{self.where}: shard {self.shards[s]} member {key}"
        if offset + size > len(m):
            raise ValueError(f"{where} lies past the shard's end ({len(m)} bytes): the shard was truncated")
        name = m[offset - 512 : offset - 412].rstrip(b"\0").decode("utf-8", "replace")
        if name.split(".", 1)[0] != key:
            raise ValueError(f"{where}: the tar header there names {name!r}: the shard is not the one written")
        data = m[offset : offset + size]
        if zlib.crc32(data) != int(crc):
            raise ValueError(
                f"{where} ({name}) is corrupt (crc32 differs from the member table): restore the shard or write the "
                "shards again"
            )
        return data

    def image(self, i: int) -> torch.Tensor:
        data = self.encoded(i)
        try:
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"{self.where}: shard {self.shards[int(self.shard_of[i])]} member {self.member_name(i)} "
                f"cannot be decoded ({reason})"
            ) from None

    def verify(self, skip: bool = False, split: str = "train", workers: int | None = None) -> list[str]:
        """Check every member's header and crc32 (reads the whole split once); unless ``skip``, the first damaged one
        stops here with one line naming its shard and member; with ``skip`` they leave the split."""
        bad = []
        for i in range(len(self)):
            try:
                self.encoded(i)
            except ValueError as e:
                if not skip:
                    raise ValueError(f"data.verify: {e}") from None
                bad.append((i, str(e)))
        if bad:
            keep = np.ones(len(self), bool)
            keep[[i for i, _ in bad]] = False
            self.members, self.shard_of, self.ids = self.members[keep], self.shard_of[keep], self.ids[keep]
            self.labels = self.labels[torch.from_numpy(keep)]
            log.warning(
                "data.skip_bad: left out %d damaged sample(s) of the %s split, e.g. %s", len(bad), split, bad[0][1]
            )
            if not len(self):
                raise ValueError(f"{self.where}: every sample of the {split} split is damaged")
        return [why for _, why in bad]


def _encoded_samples(source):
    """(bytes, extension, label) of every sample of a source, in its order: an image file's own bytes (no re-encode),
    or a lossless PNG of an in-memory image."""
    paths = getattr(source, "paths", None)
    for i in range(len(source)):
        label = int(source.labels[i])
        if paths is not None:
            path = Path(paths[i])
            yield path.read_bytes(), path.suffix.lower().lstrip(".") or "img", label
        else:
            yield bytes(encode_png(source.image(i)).numpy()), "png", label


def write_split(source, out: Path, split: str, shard_bytes: int, shard_samples: int | None, progress) -> dict:
    """Write one split's shards and member tables under ``out/<split>/`` and its wids index ``out/<split>.json``;
    returns the manifest's entry for it."""
    (out / split).mkdir(parents=True, exist_ok=True)
    shardlist, rows, shard, tar = [], [], None, None

    def close():
        tar.close()
        table = np.array(rows, dtype=MEMBERS)
        name = f"{split}/{shard.stem}.idx.npy"
        np.save(out / name, table, allow_pickle=False)
        shardlist.append(
            {
                "url": f"{split}/{shard.name}",
                "nsamples": len(rows),
                "filesize": shard.stat().st_size,
                "md5sum": _sha256(shard, "md5"),  # wids' field
                "members": name,
                "members_sha256": _sha256(out / name),
            }
        )

    for i, (data, ext, label) in enumerate(_encoded_samples(source)):
        if tar is None or (len(rows) >= (shard_samples or 1 << 62)) or tar.offset >= shard_bytes:
            if tar is not None:
                close()
            shard = out / split / f"{split}-{len(shardlist):06d}.tar"
            tar, rows = tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT), []
        key = f"{i:08d}"
        for name, payload in ((f"{key}.{ext}", data), (f"{key}.cls", str(label).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(payload), 0o444, 0
            tar.addfile(info, io.BytesIO(payload))
            if name.endswith(".cls"):
                continue
            offset = tar.offset - tarfile.BLOCKSIZE * -(-len(payload) // tarfile.BLOCKSIZE)  # this member's data
            rows.append((offset, len(payload), zlib.crc32(payload), label))
        progress(1)
    if tar is not None:
        close()
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split, "shardlist": shardlist}
    (out / f"{split}.json").write_text(json.dumps(index, indent=1))
    nsamples = sum(s["nsamples"] for s in shardlist)
    return {"nsamples": nsamples, "shards": len(shardlist), "sha256": _sha256(out / f"{split}.json")}


def write_shards(
    splits: dict,
    out: str | os.PathLike,
    classes: list[str],
    shard_bytes: int = 256 << 20,
    shard_samples: int | None = None,
    source: dict | None = None,
    progress: bool = True,
) -> Path:
    """Write ``splits`` ({split name: image source}) as shards under ``out`` (a new or empty directory); the
    manifest is written last, atomically, so an interrupted write leaves a directory that no run will read."""
    from selfsup.runtime.files import atomic_write_text

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out={out}: exists and is not an empty directory; choose a new one or delete it")
    out.mkdir(parents=True, exist_ok=True)
    total = sum(len(s) for s in splits.values())
    with _progress(total, progress) as advance:
        entries = {n: write_split(src, out, n, shard_bytes, shard_samples, advance) for n, src in splits.items()}
    manifest = {"format": FORMAT, "classes": list(classes), "splits": entries, "source": source or {}}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return out


class _progress:
    """A rich progress bar over samples written (a no-op when off)."""

    def __init__(self, total: int, on: bool):
        self.total, self.on = total, on

    def __enter__(self):
        if not self.on:
            return lambda n: None
        from rich.progress import Progress

        self.bar = Progress(transient=False)
        self.bar.start()
        task = self.bar.add_task("writing shards", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.on:
            self.bar.stop()


USAGE = (
    "usage: selfsup-shards src=<dataset root> out=<new directory> [dataset=imagefolder|cifar10|cifar100|stl10] "
    "[train_dir=train] [val_dir=val] [shard_mb=256] [shard_samples=N] [download=false] [verify=false]"
)
ARGS = {
    "src": str,
    "out": str,
    "dataset": str,
    "train_dir": str,
    "val_dir": str,
    "shard_mb": float,
    "shard_samples": int,
    "download": bool,
    "verify": bool,
}


def parse_args(argv: list[str]) -> dict:
    from selfsup.runtime.errors import key_values

    defaults = {"dataset": "imagefolder", "train_dir": "train", "val_dir": "val", "shard_mb": 256.0}
    defaults |= {"shard_samples": None, "download": False, "verify": False}
    args = key_values(argv, ARGS, USAGE, required=("src", "out"), defaults=defaults)
    if args["shard_mb"] <= 0 or (args["shard_samples"] is not None and args["shard_samples"] < 1):
        raise ValueError(f"shard_mb={args['shard_mb']} shard_samples={args['shard_samples']}: expected positive sizes")
    return args


def shards_from(args: dict, progress: bool = True) -> Path:
    """Write the splits of a dataset (read as ``data=<dataset> data.root=<src>`` reads it) as shards."""
    from selfsup.data.datamodules import SSLDataModule

    if args["dataset"] == "shards":
        raise ValueError("dataset=shards: src is already a shard directory")
    dm = SSLDataModule(
        dataset=args["dataset"],
        root=args["src"],
        train_dir=args["train_dir"],
        val_dir=args["val_dir"],
        download=args["download"],
        verify=args["verify"],
        num_workers=0,
    )
    sources = dm.load_splits()
    names = [args["train_dir"], args["val_dir"], EXTRA_SPLIT][: len(sources)]
    return write_shards(
        dict(zip(names, sources)),
        args["out"],
        sources[0].classes,
        int(args["shard_mb"] * (1 << 20)),
        args["shard_samples"],
        source={k: args[k] for k in ("src", "dataset", "train_dir", "val_dir")},
        progress=progress,
    )


def main(argv: list[str] | None = None) -> None:
    from selfsup.runtime.errors import run_command

    out = run_command("selfsup-shards", USAGE, argv, lambda a: shards_from(parse_args(a)))
    if out is not None:
        print(f"wrote {out / MANIFEST}")


if __name__ == "__main__":
    main()
