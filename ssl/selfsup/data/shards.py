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


def is_shard_dir(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds shards written by ``selfsup-shards write`` (its manifest)."""
    return (Path(root) / MANIFEST).is_file()


def read_manifest(root: str | os.PathLike, key: str = "data.root") -> dict:
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{key}={root}: no {MANIFEST}: not a shard directory, or its selfsup-shards write did not finish "
            "(the manifest is written last)"
        )
    manifest = _read_json(root / MANIFEST, key)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{key}={root}: {MANIFEST} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class ShardImages:
    """One split of a shard directory as an image source (``selfsup.data.sources``): ``image(i)`` decodes sample i's
    bytes exactly as :class:`~selfsup.data.sources.FileImages` decodes its file (``decode_image``, RGB).

    Shards are memory-mapped lazily in each process (DataLoader workers map their own; nothing open is pickled), so
    any number of workers and processes read them concurrently.
    """

    def __init__(self, root: str | os.PathLike, split: str, key: str = "data.root"):
        self.root, self.split, self.key = Path(root), split, key
        manifest = read_manifest(self.root, key)
        splits = manifest.get("splits", {})
        if split not in splits:
            raise FileNotFoundError(
                f"{key}={self.root}: no split {split!r} in its {MANIFEST} (it holds {sorted(splits)}): set "
                "data.train_dir / data.val_dir to those names"
            )
        index_path = self.root / f"{split}.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{key}={self.root}: {index_path.name} is missing (listed in {MANIFEST})")
        if _sha256(index_path) != splits[split]["sha256"]:
            raise ValueError(
                f"{key}={self.root}: {index_path.name} does not match {MANIFEST} (sha256 differs): the shards were "
                "changed after they were written; write them again with selfsup-shards write"
            )
        index = _read_json(index_path, key)
        self.classes = list(manifest["classes"])
        self.shards, tables = [], []
        for entry in index["shardlist"]:
            shard = self.root / entry["url"]
            if not shard.is_file():
                raise FileNotFoundError(
                    f"{key}={self.root}: shard {entry['url']} is missing ({index_path.name} lists "
                    f"{len(index['shardlist'])} shards)"
                )
            size = shard.stat().st_size
            if size != entry["filesize"]:
                raise ValueError(
                    f"{key}={self.root}: shard {entry['url']} is {size} bytes, {index_path.name} says "
                    f"{entry['filesize']}: {'truncated' if size < entry['filesize'] else 'replaced'} since it was "
                    "written; copy it again or write the shards again"
                )
            table_path = self.root / entry["members"]
            if not table_path.is_file() or _sha256(table_path) != entry["members_sha256"]:
                raise ValueError(
                    f"{key}={self.root}: member table {entry['members']} of shard {entry['url']} is "
                    f"{'missing' if not table_path.is_file() else 'not the one written (sha256 differs)'}"
                )
            table = np.load(table_path, allow_pickle=False)
            if table.dtype != MEMBERS or len(table) != entry["nsamples"]:
                raise ValueError(
                    f"{key}={self.root}: member table {entry['members']} has {len(table)} rows of {table.dtype}, "
                    f"expected {entry['nsamples']} of {MEMBERS}"
                )
            self.shards.append(entry["url"])
            tables.append(table)
        table = np.concatenate(tables) if tables else np.zeros(0, MEMBERS)
        if len(table) != splits[split]["nsamples"]:
            raise ValueError(
                f"{key}={self.root}: split {split} holds {len(table)} samples, {MANIFEST} says "
                f"{splits[split]['nsamples']}"
            )
        if not len(table):
            raise ValueError(f"{key}={self.root}: split {split} holds no samples")
        self.members = table
        self.shard_of = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
        self.labels = torch.from_numpy(table["label"].astype(np.int64))
        self.ids = np.arange(len(table))  # sample i's member key (data.skip_bad leaves rows out)
        self._digest = splits[split]["sha256"][:20]
        self._maps: dict[int, mmap.mmap] = {}

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
            path = self.root / self.shards[s]
            try:
                with open(path, "rb") as f:
                    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (FileNotFoundError, ValueError) as e:  # removed, or emptied, after the split was opened
                where = f"{self.key}={self.root}: shard {self.shards[s]}"
                raise FileNotFoundError(f"{where} cannot be read ({e})") from None
            self._maps[s] = m
        return m

    def member_name(self, i: int) -> str:
        return f"{int(self.ids[i]):08d}"

    def encoded(self, i: int) -> bytes:
        """Sample i's stored bytes, checked: its tar header names it, and its crc32 is the one written."""
        s, (offset, size, crc, _) = int(self.shard_of[i]), self.members[i]
        m, key = self._map(s), self.member_name(i)
        where = f"{self.key}={self.root}: shard {self.shards[s]} member {key}"
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
                f"{self.key}={self.root}: shard {self.shards[int(self.shard_of[i])]} member {self.member_name(i)} "
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
                raise ValueError(f"{self.key}={self.root}: every sample of the {split} split is damaged")
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
    args = {"dataset": "imagefolder", "train_dir": "train", "val_dir": "val", "shard_mb": 256.0, "shard_samples": None}
    args |= {"download": False, "verify": False}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ARGS:
            raise ValueError(f"argument {arg!r}: expected key=value with key one of {list(ARGS)}; {USAGE}")
        kind = ARGS[key]
        try:
            if kind is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError
                args[key] = value.lower() == "true"
            else:
                args[key] = kind(value)
        except ValueError:
            raise ValueError(f"{key}={value}: expected {'true or false' if kind is bool else kind.__name__}") from None
    missing = [k for k in ("src", "out") if not args.get(k)]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: {USAGE}")
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
    import sys

    from selfsup.runtime.errors import one_line_errors

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    out = one_line_errors("selfsup-shards")(lambda: shards_from(parse_args(argv)))()
    print(f"wrote {out / MANIFEST}")


if __name__ == "__main__":
    main()
