"""Images/s per CPU core from encoded image to two augmented views (bench/LOADING.md).

    .venv/bin/python bench/bench_loading.py [--images 1000] [--out bench/LOADING.md]
    .venv/bin/python bench/bench_loading.py --blur-only
    .venv/bin/python bench/bench_loading.py --ops [--images 300]

Three paths, each in one process with one thread (images/s per core), over the same images in a shuffled order:

- (a) the peers' default: ``torchvision.datasets.ImageFolder`` (PIL loader) with torchvision v2 transforms on PIL
  images — SimCLR's two views (random resized crop, flip, colour jitter p 0.8, grayscale p 0.2; blur p 0.5 at 224);
- (b) ours from the ImageFolder: ``FileImages`` (``decode_image``) + ``MultiViewDataset`` with the same views
  (``selfsup.data.views.ViewAugment``, per-sample seeded);
- (c) ours from shards: ``ShardImages`` written from (b)'s folder by ``selfsup-shards`` (the same bytes, crc-checked);
- (d) (c) with ``views.views.v1.fast_blur=true`` (separable blur; equal up to float rounding), where there is blur;
- (e) (c) with the views of a batch of 64 computed at once (``selfsup.data.gpu_views`` on the CPU, as
  ``data.views_on_device=true`` runs them; its own parameter stream, not the per-sample one of (b)-(d)).

On two sets: CIFAR-10 (32 px JPEGs, ../shared/data/cifar10) to two 32 px views, and a 224 px set made here by
upsampling CIFAR-10 training images (bicubic, JPEG quality 90: not natural 224 px photos — their JPEGs are smaller
and decode faster than ImageNet's) to two 224 px views. A second table times the decoders alone on the 224 px set:
PIL, PIL in draft mode (libjpeg's DCT scaling to 1/2: what a crop could use when the image is at least twice the
view), ``torchvision.io.decode_jpeg``, and simplejpeg (if installed; ``pip install simplejpeg``) at full and half size.
A third times the Gaussian blur alone (the costliest op at 224 px): torchvision's, our default, views.fast_blur.
``--ops`` prints what limits (c) at 224 px: the time of each step of the real code path (shard read and decode,
parameter draw, each torchvision op, the blur), measured by wrapping each function with a timer.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = Path(os.environ.get("SELFSUP_CIFAR10", ROOT.parent / "shared" / "data" / "cifar10"))
WORK = ROOT / "runs" / "bench_loading"
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def upsampled_set(n_per_class: int) -> Path:
    """The first ``n_per_class`` CIFAR-10 training images of each class, upsampled to 224 px, as an ImageFolder."""
    from PIL import Image

    out = WORK / f"cifar224_{n_per_class}"
    if (out / "done").is_file():
        return out
    for cls_dir in sorted((CIFAR10 / "train").iterdir()):
        (out / "train" / cls_dir.name).mkdir(parents=True, exist_ok=True)
        (out / "val" / cls_dir.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(cls_dir.iterdir())[:n_per_class]:
            with Image.open(path) as im:
                big = im.convert("RGB").resize((224, 224), Image.BICUBIC)
            big.save(out / "train" / cls_dir.name / f"{path.stem}.jpg", quality=90)
        big.save(out / "val" / cls_dir.name / "0.jpg", quality=90)
    (out / "done").write_text("")
    return out


def shards_of(folder: Path, val_dir: str) -> Path:
    from selfsup.data.shards import is_shard_dir, parse_args, shards_from

    out = WORK / f"{folder.name}_shards"
    if not is_shard_dir(out):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        shards_from(parse_args([f"src={folder}", f"out={out}", f"val_dir={val_dir}"]), progress=False)
    return out


def peers_pipeline(folder: Path, size: int, stats, blur: bool):
    """(a): what solo-learn and lightly run by default — PIL decode, torchvision transforms on PIL images."""
    import torchvision
    from torchvision.transforms import v2

    ops = [
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(0.2),
        *([v2.RandomApply([v2.GaussianBlur(23, (0.1, 2.0))], p=0.5)] if blur else []),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(*stats),
    ]
    view = v2.Compose(ops)
    ds = torchvision.datasets.ImageFolder(str(folder / "train"), transform=lambda im: (view(im), view(im)))
    return lambda i: ds[i]


def ours_pipeline(source, size: int, stats, blur: bool, fast_blur: bool = False):
    from selfsup.data.datasets import MultiViewDataset
    from selfsup.data.views import MultiViewTransform, ViewAugment

    v = ViewAugment(size, mean=stats[0], std=stats[1], blur_p=0.5 if blur else 0.0, fast_blur=fast_blur)
    ds = MultiViewDataset(source, MultiViewTransform({"v1": v, "v2": v}), seed=0)
    return lambda i: ds[(0, i, -1)]


def batched_pipeline(source, size: int, stats, blur: bool, batch: int = 64):
    """Decode one image at a time, augment a batch at once (``selfsup.data.gpu_views`` on the CPU, what
    ``data.views_on_device=true`` runs): the rate per image of whole batches."""
    from selfsup.data.gpu_views import GpuMultiViewTransform
    from selfsup.data.views import ViewAugment

    v = ViewAugment(size, mean=stats[0], std=stats[1], blur_p=0.5 if blur else 0.0)
    views, pending = GpuMultiViewTransform({"v1": v, "v2": v}), []

    def step(i):
        pending.append(i)
        if len(pending) == batch:
            images = torch.stack([source.image(j) for j in pending])
            keys = torch.tensor([[0, j, -1] for j in pending])
            views.batch(images, 0, keys)
            pending.clear()

    return step


def rate(fn, indices) -> float:
    for i in indices[:20]:  # warm-up
        fn(i)
    t = time.perf_counter()
    for i in indices:
        fn(i)
    return len(indices) / (time.perf_counter() - t)


def decoders(folder: Path, n: int) -> list[tuple[str, float]]:
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    files = sorted((folder / "train").rglob("*.jpg"))[:n]
    blobs = [p.read_bytes() for p in files]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]

    def pil(b, draft=False):
        with Image.open(io.BytesIO(b)) as im:
            if draft:
                im.draft("RGB", (im.width // 2, im.height // 2))
            return im.convert("RGB").load()

    rows = [
        ("PIL", lambda i: pil(blobs[i])),
        ("PIL draft 1/2", lambda i: pil(blobs[i], True)),
        ("torchvision decode_jpeg", lambda i: decode_jpeg(tensors[i], mode=ImageReadMode.RGB)),
    ]
    try:
        import simplejpeg

        rows.append(("simplejpeg", lambda i: simplejpeg.decode_jpeg(blobs[i])))
        rows.append(("simplejpeg 1/2 (min_height)", lambda i: simplejpeg.decode_jpeg(blobs[i], min_height=112)))
    except ImportError:
        rows.append(("simplejpeg (not installed)", None))
    idx = list(range(len(blobs)))
    return [(name, rate(fn, idx) if fn else float("nan")) for name, fn in rows]


def blurs(repeats: int = 50) -> list[tuple[str, float]]:
    """Milliseconds per Gaussian blur of one uint8 3 x 224 x 224 image with the 224 px views' 23 x 23 kernel (sigma
    1): torchvision's float32 2-D convolution, our default float64 passes, views.fast_blur's float32 passes."""
    from torchvision.transforms.v2 import functional as TF

    from selfsup.data.views import gaussian_blur, separable_blur

    x = torch.randint(0, 256, (3, 224, 224), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    rows = [
        ("torchvision gaussian_blur (float32, 2-D)", lambda: TF.gaussian_blur(x, [23, 23], [1.0, 1.0])),
        ("ours, default (float64, two 1-D passes)", lambda: gaussian_blur(x, 23, 1.0)),
        ("ours, views.fast_blur (float32, two 1-D passes)", lambda: separable_blur(x, 23, 1.0)),
    ]
    out = []
    for name, fn in rows:
        for _ in range(5):  # warm-up (oneDNN builds its kernels on first use)
            fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        out.append((name, (time.perf_counter() - t) / repeats * 1e3))
    return out


class Timed:
    """Wraps callables with timers: ``wrap(label, fn)`` returns ``fn`` that adds its seconds to ``seconds[label]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, label: str, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t

        return timed


# torchvision's functional ops that ViewAugment.apply calls, as they are labelled in the table
VIEW_OPS = {
    "resized_crop": "random resized crop (antialiased)",
    "horizontal_flip": "flip",
    "adjust_brightness": "brightness",
    "adjust_contrast": "contrast",
    "adjust_saturation": "saturation",
    "adjust_hue": "hue",
    "rgb_to_grayscale": "grayscale",
    "solarize": "solarize",
    "normalize": "normalize",
}


def ops(images: int, folder: Path | None = None) -> list[tuple[str, float]]:
    """Milliseconds per image (two 224 px views) of each step of path (c) over ``images`` images of ``folder`` (the
    224 px set; made for ``images`` when None): the real code path with every step wrapped by a timer; "the rest" is
    the total minus the steps (uint8 -> float, Python, the per-sample generator)."""
    import types

    from torchvision.transforms.v2 import functional as TF

    from selfsup.data import views as views_mod
    from selfsup.data.shards import ShardImages

    folder = folder or upsampled_set(max(1, -(-images // 10)))
    source = ShardImages(shards_of(folder, "val"), "train")
    step = ours_pipeline(source, 224, IMAGENET_STATS, blur=True)
    indices = random.Random(0).sample(range(len(source)), min(images, len(source)))
    timer = Timed()
    patched = types.SimpleNamespace(**{name: getattr(TF, name) for name in dir(TF) if not name.startswith("_")})
    for name, label in VIEW_OPS.items():
        setattr(patched, name, timer.wrap(label, getattr(TF, name)))
    originals = (views_mod.TF, views_mod.gaussian_blur, views_mod.ViewAugment.sample)
    views_mod.TF = patched
    views_mod.gaussian_blur = timer.wrap("Gaussian blur (float64 default)", views_mod.gaussian_blur)
    views_mod.ViewAugment.sample = timer.wrap("draw the parameters", views_mod.ViewAugment.sample)
    source.image = timer.wrap("read + decode (shard member)", source.image)
    try:
        for i in indices[:20]:  # warm-up
            step(i)
        timer.seconds.clear()
        t = time.perf_counter()
        for i in indices:
            step(i)
        total = time.perf_counter() - t
    finally:
        views_mod.TF, views_mod.gaussian_blur, views_mod.ViewAugment.sample = originals
        del source.image  # the instance's timed wrapper: the class's method again
    rows = sorted(timer.seconds.items(), key=lambda kv: -kv[1])
    rows.append(("the rest", total - sum(timer.seconds.values())))
    return [(label, s / len(indices) * 1e3) for label, s in rows] + [("total", total / len(indices) * 1e3)]


def ops_table(rows: list[tuple[str, float]]) -> list[str]:
    total = rows[-1][1]
    return [
        "| step (two 224 px views) | ms per image | share |",
        "|---|---|---|",
        *[f"| {label} | {ms:.2f} | {ms / total:.0%} |" for label, ms in rows],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images timed per row")
    parser.add_argument("--out", default=str(ROOT / "bench" / "LOADING.md"))
    parser.add_argument("--note", default="", help="a sentence for the table's header (e.g. what else ran)")
    parser.add_argument("--blur-only", action="store_true", help="print the blur table only (writes nothing)")
    parser.add_argument("--ops", action="store_true", help="print the time of each step of (c) at 224 px only")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "ssl"))
    torch.set_num_threads(1)
    if args.blur_only:
        print("| blur | ms |\n|---|---|\n" + "\n".join(f"| {label} | {ms:.1f} |" for label, ms in blurs()))
        return
    if args.ops:
        print("\n".join(ops_table(ops(args.images))))
        return
    from selfsup.data.shards import ShardImages
    from selfsup.data.sources import FileImages

    big = upsampled_set(max(1, -(-args.images // 10)))
    sets = [
        ("CIFAR-10 (32 px JPEG)", CIFAR10, "test", 32, CIFAR_STATS, False),
        ("CIFAR-10 upsampled to 224 px", big, "val", 224, IMAGENET_STATS, True),
    ]
    lines = []
    for name, folder, val_dir, size, stats, blur in sets:
        shards = shards_of(folder, val_dir)
        files = FileImages(folder / "train")
        indices = random.Random(0).sample(range(len(files)), min(args.images, len(files)))
        paths = [
            ("(a) ImageFolder + PIL + torchvision v2 (peers)", peers_pipeline(folder, size, stats, blur)),
            ("(b) ours, ImageFolder", ours_pipeline(files, size, stats, blur)),
            ("(c) ours, shards", ours_pipeline(ShardImages(shards, "train"), size, stats, blur)),
            *(
                [
                    (
                        "(d) ours, shards, views.fast_blur",
                        ours_pipeline(ShardImages(shards, "train"), size, stats, blur, True),
                    )
                ]
                if blur
                else []
            ),
            ("(e) ours, shards, batched views (64)", batched_pipeline(ShardImages(shards, "train"), size, stats, blur)),
        ]
        rates = [(label, rate(fn, indices)) for label, fn in paths]
        for label, r in rates:
            lines.append(f"| {name} | 2 x {size} px | {label} | {r:.0f} | {r / rates[0][1]:.2f}x |")
            print(lines[-1], flush=True)
    dec = decoders(big, args.images)
    blur = blurs()
    op_images = min(args.images, 300)
    steps = ops(op_images, big)  # the main table's 224 px set and shards, not a second one
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = "\n".join(
        [
            f"Images/s per CPU core (one process, one thread), {args.images} images a row in a shuffled order, "
            f"SimCLR's two views; {cpu}, {datetime.date.today()}. Command: `.venv/bin/python bench/bench_loading.py`"
            + (f". {args.note}" if args.note else ""),
            "",
            "| images | views | path | images/s per core | vs (a) |",
            "|---|---|---|---|---|",
            *lines,
            "",
            "Decoding alone, the 224 px JPEGs (quality 90), one thread:",
            "",
            "| decoder | images/s |",
            "|---|---|",
            *[f"| {label} | {r:.0f} |" for label, r in dec],
            "",
            "The Gaussian blur alone, one 3 x 224 x 224 uint8 image, 23 x 23 kernel, one thread:",
            "",
            "| blur | ms |",
            "|---|---|",
            *[f"| {label} | {ms:.1f} |" for label, ms in blur],
            "",
            f"What limits (c) at 224 px: each step of its code path timed on {op_images} images (`--ops`), one thread:",
            "",
            *ops_table(steps),
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
