"""Pseudo-label folders for PrimeDepth's pre-training (paper Sec. 3.4): images + teacher labels.

Layout (paths relative to ROOT; ``<name>`` may contain sub-folders)::

    ROOT/images/<name>.png|.jpg|...       the images (8-bit RGB)
    ROOT/depth/<name>.npy | <name>.png    teacher depth or disparity, any scale (float .npy or
                                          uint16 PNG); non-finite = invalid, and 0 when it is depth
    ROOT/segmentation/<name>.png          optional: 8-bit class ids 0..149 (ADE20K), 255 = ignore
    ROOT/captions/<name>.txt              optional: one caption per image (what the captioner cache writes)
    ROOT/captions.jsonl | captions.json   optional instead: {"name": ..., "caption": ...} per line, or {name: caption}
    ROOT/labels.json                      optional: {"depth_kind": "disparity" | "depth", "teacher": "..."}

:class:`PseudoLabelDataset` only reads. :func:`prepare_pseudo_labels` fills what is missing,
once, with any depth teacher (a ``diffdepth`` model, a ``transformers`` depth model or a
callable) and any captioner (:mod:`diffdepth.backbone.captions`), writing the files above
atomically; each process of a launch labels its share of the images, so later epochs, runs
and processes reuse the cache. The training factory calls it for a ``pseudo_labels`` entry
that names a ``teacher`` or a ``captioner``.

Samples: ``name``, ``image`` [3,H,W], ``depth`` [1,H,W] (teacher values as stored, or 0),
``valid`` [1,H,W], ``label_kind`` (``disparity``/``depth``), and when present
``segmentation`` int64 [1,H,W] and ``caption`` str.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ConfigError, InputError
from ..utils import PathLike, atomic_path
from .files import IMAGE_EXTS, dataset_root, read_npy, read_rgb, read_uint16_png
from .folder import resize_nearest, resize_sample

KINDS = ("disparity", "depth")
IGNORE = 255
LABELS_FILE = "labels.json"
CAPTION_DIR = "captions"


def list_images(folder: Path) -> List[Tuple[str, Path]]:
    """``(name, path)`` for every image under ``folder`` (recursive, sorted)."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTS and path.is_file() and not path.name.startswith("."):
            out.append((path.relative_to(folder).with_suffix("").as_posix(), path))
    return out


def depth_file(folder: Path, name: str) -> Optional[Path]:
    for ext in (".npy", ".png"):
        p = folder / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def read_labels_meta(root: Path) -> Dict[str, Any]:
    path = root / LABELS_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {path} ({err}); it must be JSON like {{\"depth_kind\": \"disparity\"}}") from None
    if not isinstance(meta, dict) or meta.get("depth_kind", "disparity") not in KINDS:
        raise InputError(f"{path}: depth_kind must be one of {KINDS}")
    return meta


def read_captions_file(path: Path) -> Dict[str, str]:
    """``captions.json`` ({name: caption}) or ``captions.jsonl`` ({"name", "caption"} per line)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            out = {}
            for i, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    rec = json.loads(line)
                    out[str(rec["name"])] = str(rec["caption"])
            return out
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("expected an object {name: caption}")
        return {str(k): str(v) for k, v in data.items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"cannot read captions file {path} ({err}); use {{name: caption}} (.json) or "
                         f"one {{\"name\": ..., \"caption\": ...}} per line (.jsonl)") from None


class CaptionCache:
    """Per-image captions of a pseudo-label folder: a captions file (.json/.jsonl) and/or the
    ``captions/<name>.txt`` folder the captioner cache writes (the file wins for a name in both)."""

    def __init__(self, root: Path, captions: Optional[PathLike] = None):
        self.dir: Optional[Path] = root / CAPTION_DIR if (root / CAPTION_DIR).is_dir() else None
        self.table: Dict[str, str] = {}
        if captions is None:
            captions = next((c for c in ("captions.jsonl", "captions.json") if (root / c).is_file()), None)
        if captions is not None:
            path = root / captions
            if path.is_dir():
                self.dir = path
            elif path.is_file():
                self.table = read_captions_file(path)
            else:
                raise InputError(f"captions {path} does not exist (a folder of <name>.txt or a .json/.jsonl file)")

    @property
    def present(self) -> bool:
        return self.dir is not None or bool(self.table)

    def get(self, name: str) -> Optional[str]:
        if name in self.table:
            return self.table[name]
        if self.dir is not None:
            p = self.dir / f"{name}.txt"
            if p.is_file():
                return p.read_text(encoding="utf-8").strip()
        return None


class PseudoLabelDataset:
    """Images with teacher pseudo labels (see the module docstring for the layout).

    Args:
        root: the folder.
        images, depth, segmentation: sub-folder names (``segmentation`` is optional; ``None``
            leaves existing labels unused).
        captions: a folder of ``<name>.txt`` or a ``.json``/``.jsonl`` file, relative to ``root``
            (default: whichever of ``captions/``, ``captions.jsonl``, ``captions.json`` exists).
        depth_kind: ``disparity`` (e.g. Depth Anything) or ``depth``; default from
            ``labels.json``, else ``disparity``.
        seg_classes: labels must be in ``[0, seg_classes)`` or 255.
        size: optional (H, W) to resize to (labels nearest-neighbour).
    """

    def __init__(self, root: PathLike, images: str = "images", depth: str = "depth",
                 segmentation: Optional[str] = "segmentation", captions: Optional[str] = None,
                 depth_kind: Optional[str] = None, seg_classes: int = 150,
                 size: Optional[Sequence[int]] = None) -> None:
        self.root = dataset_root(root, "pseudo-label folder")
        self.image_dir = self.root / images
        self.depth_dir = self.root / depth
        if not self.image_dir.is_dir():
            raise InputError(f"pseudo-label folder {self.root} has no {images}/ folder of images")
        meta = read_labels_meta(self.root)
        self.depth_kind = depth_kind or meta.get("depth_kind", "disparity")
        if self.depth_kind not in KINDS:
            raise InputError(f"depth_kind must be one of {KINDS}, got {self.depth_kind!r}")
        seg_dir = self.root / segmentation if segmentation else None  # null: ignore the labels
        self.seg_dir = seg_dir if seg_dir is not None and seg_dir.is_dir() else None
        self.captions = CaptionCache(self.root, captions)
        self.seg_classes = int(seg_classes)
        self.size = size
        self.items: List[Tuple[str, Path, Path]] = []
        missing = []
        for name, path in list_images(self.image_dir):
            d = depth_file(self.depth_dir, name)
            if d is None:
                missing.append(name)
            else:
                self.items.append((name, path, d))
        if missing:
            raise InputError(f"{len(missing)} image(s) in {self.image_dir} have no teacher label "
                             f"{self.depth_dir}/<name>.npy|.png (first: {missing[0]}); produce them with a teacher "
                             f"(reader option teacher: ...) or remove those images")
        if not self.items:
            raise InputError(f"no images found under {self.image_dir}")

    def __len__(self) -> int:
        return len(self.items)

    def _read_depth(self, path: Path) -> Tuple[np.ndarray, np.ndarray]:
        raw = read_uint16_png(path) if path.suffix == ".png" else read_npy(path)
        raw = np.squeeze(raw).astype(np.float32)
        if raw.ndim != 2:
            raise InputError(f"teacher label {path} must be a [H,W] map, got shape {raw.shape}")
        valid = np.isfinite(raw)
        if self.depth_kind == "depth":
            valid &= raw > 0
        return np.where(valid, raw, 0.0).astype(np.float32), valid

    def _read_seg(self, name: str, shape: Tuple[int, int]) -> Optional[np.ndarray]:
        from PIL import Image

        path = self.seg_dir / f"{name}.png"
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P"):
                    raise ValueError(f"mode {im.mode}; expected an 8-bit single-channel PNG of class ids")
                seg = np.asarray(im).astype(np.int64)
        except Exception as err:
            raise InputError(f"cannot read segmentation label {path}: {err}") from None
        bad = (seg != IGNORE) & (seg >= self.seg_classes)
        if bad.any():
            raise InputError(f"segmentation label {path} has class {int(seg[bad][0])}; classes are "
                             f"0..{self.seg_classes - 1} and {IGNORE} = ignore")
        return seg if seg.shape == shape else resize_nearest(seg, shape)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        import torch
        import torch.nn.functional as F

        name, img_path, d_path = self.items[index]
        image = read_rgb(img_path)
        h, w = image.shape[-2:]
        depth, valid = self._read_depth(d_path)
        if depth.shape != (h, w):  # teachers often predict at their own resolution
            t = torch.from_numpy(np.where(valid, depth, np.nan)[None, None])
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
            valid = np.isfinite(t)
            depth = np.where(valid, t, 0.0).astype(np.float32)
        sample: Dict[str, Any] = {"name": name, "image": image, "depth": depth[None], "valid": valid[None],
                                  "label_kind": self.depth_kind}
        if self.seg_dir is not None:
            seg = self._read_seg(name, (h, w))
            sample["segmentation"] = (np.full((1, h, w), IGNORE, np.int64) if seg is None else seg[None])
        if self.captions.present:
            sample["caption"] = self.captions.get(name) or ""
        return resize_sample(sample, self.size)


# --------------------------------------------------------------------------- producing labels

Teacher = Callable[[np.ndarray], Tuple[np.ndarray, str]]


def load_teacher(spec: Union[str, Dict[str, Any], Callable], device: str = "auto") -> Teacher:
    """A depth teacher ``image float32 [3,H,W] in [0,1] -> (map [H,W], kind)`` from a spec:

    * ``{"diffdepth": CHECKPOINT, "method": M}`` — any ``diffdepth`` model (method optional);
      kind from its output (disparity for PrimeDepth, depth otherwise);
    * ``{"transformers": MODEL, "kind": "disparity"}`` — a ``transformers`` depth-estimation
      model folder or hub id (``AutoModelForDepthEstimation`` + its image processor); Depth
      Anything and DPT predict disparity, metric models depth;
    * ``{"callable": "module:function", "kind": ...}`` or a Python callable: ``images [B,3,H,W]
      -> [B,1,H,W]`` (tensor or array), kind default disparity.
    """
    import torch

    if callable(spec) and not isinstance(spec, dict):
        spec = {"callable": spec}
    if isinstance(spec, str):
        spec = {"callable": spec} if ":" in spec and not os.path.exists(spec) else {"diffdepth": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"teacher must be a mapping like {{diffdepth: CKPT}}, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"teacher kind must be one of {KINDS}, got {kind!r}")
    dev = spec.pop("device", device)
    if "diffdepth" in spec:
        from .. import load_model
        from ..pipeline import DepthPipeline

        model = load_model(spec.pop("method", None), spec.pop("diffdepth"), device=dev)
        pipe = DepthPipeline(model, processing_res=spec.pop("processing_res", None))

        def run(image):
            pred = pipe(torch.from_numpy(image))
            k = kind or ("disparity" if "disparity" in pred.kind else "depth")
            return np.asarray(pred.depth, np.float32), k
        return run
    if "transformers" in spec:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        from ..utils import parse_device

        source = spec.pop("transformers")
        try:
            processor = AutoImageProcessor.from_pretrained(source)
            net = AutoModelForDepthEstimation.from_pretrained(source).eval().to(parse_device(dev))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load the transformers depth model {source!r} ({err}); "
                              f"pass a local folder when offline") from None

        def run(image):
            h, w = image.shape[-2:]
            rgb = (np.clip(image.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
            inputs = processor(images=rgb, return_tensors="pt").to(net.device)
            with torch.no_grad():
                pred = net(**inputs).predicted_depth  # [B,h',w']
            pred = torch.nn.functional.interpolate(pred[:, None].float(), size=(h, w), mode="bilinear",
                                                   align_corners=False)[0, 0]
            return pred.cpu().numpy().astype(np.float32), kind or "disparity"
        return run
    if "callable" in spec:
        from ..methods.primedepth.task import _load_callable

        fn = _load_callable(spec.pop("callable"))

        def run(image):
            with torch.no_grad():
                out = fn(torch.from_numpy(image)[None])
            out = np.squeeze(np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out, np.float32))
            return out, kind or "disparity"
        return run
    raise ConfigError(f"teacher {spec!r}: give one of diffdepth, transformers or callable")


def prepare_pseudo_labels(root: PathLike, teacher: Any = None, captioner: Any = None, images: str = "images",
                          depth: str = "depth", captions: Optional[str] = None, device: str = "auto",
                          progress: bool = False) -> Dict[str, int]:
    """Fill the missing teacher labels and captions of a pseudo-label folder (cached, atomic).

    Under a launcher every process labels its contiguous share of the missing images and
    all wait for each other at the end. Returns counts ``{"depth": n, "captions": n}`` of
    files written by this process.
    """
    from .. import distributed

    root = Path(root)
    image_dir = root / images
    if not image_dir.is_dir():
        raise InputError(f"pseudo-label folder {root} has no {images}/ folder of images")
    all_images = list_images(image_dir)
    written = {"depth": 0, "captions": 0}
    if teacher is not None:
        meta = read_labels_meta(root)
        # shard first, then look at the files: every process gets the same share whatever the others wrote
        todo = [(n, p) for n, p in distributed.shard(all_images) if depth_file(root / depth, n) is None]
        run = load_teacher(teacher, device) if todo else None
        kinds = set()
        for name, path in todo:
            values, kind = run(read_rgb(path))
            if meta.get("depth_kind", kind) != kind:
                raise InputError(f"teacher gives {kind} but {root / LABELS_FILE} says {meta['depth_kind']}; "
                                 f"use one teacher per folder")
            kinds.add(kind)
            out = root / depth / f"{name}.npy"
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.asarray(values, np.float32))
            written["depth"] += 1
        all_kinds = {k for part in distributed.gather_objects(sorted(kinds)) for k in part}
        if len(all_kinds) > 1:
            raise InputError(f"the teacher produced both {sorted(all_kinds)}; one kind per folder")
        if distributed.is_main() and all_kinds and not (root / LABELS_FILE).is_file():
            with atomic_path(root / LABELS_FILE) as tmp:
                tmp.write_text(json.dumps({"depth_kind": all_kinds.pop(), "teacher": str(teacher)}) + "\n")
    if captioner is not None:
        from ..backbone.captions import load_captioner

        cache = CaptionCache(root, captions)
        out_dir = cache.dir or root / CAPTION_DIR
        todo = [(n, p) for n, p in distributed.shard(all_images) if cache.get(n) is None]
        cap = load_captioner(captioner, device=device) if todo else None
        for name, path in todo:
            from PIL import Image

            with Image.open(path) as im:
                text = cap([im.convert("RGB")])[0]
            out = out_dir / f"{name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out) as tmp:
                tmp.write_text(text.strip() + "\n", encoding="utf-8")
            written["captions"] += 1
    distributed.barrier()
    return written


class CaptionedDataset:
    """Any reader plus cached captions: sample ``name`` -> ``captions_dir/<name>.txt`` as ``caption``.

    With a ``captioner``, the captions missing at construction are made once from the
    reader's images (each process of a launch captions its share, then all wait) and written
    atomically; the wrapper itself only reads, across epochs and processes. Samples without
    a caption get ``""`` (the empty prompt).
    """

    def __init__(self, dataset: Any, captions_dir: PathLike, captioner: Any = None, device: str = "auto"):
        from .. import distributed

        self.dataset = dataset
        self.dir = Path(captions_dir)
        if captioner is not None:
            todo = [i for i in distributed.shard(list(range(len(dataset))))
                    if not self._file(self._name(i)).is_file()]
            if todo:
                from ..backbone.captions import load_captioner

                cap = load_captioner(captioner, device=device)
                for i in todo:
                    sample = dataset[i]
                    text = cap([np.asarray(sample["image"], np.float32).transpose(1, 2, 0)])[0]
                    with atomic_path(self._file(sample["name"])) as tmp:
                        tmp.write_text(str(text).strip() + "\n", encoding="utf-8")
            distributed.barrier()

    def _name(self, i: int) -> str:
        items = getattr(self.dataset, "items", None)  # folder-style readers know names without decoding
        if items is not None and items and isinstance(items[i], tuple) and isinstance(items[i][0], str):
            return items[i][0]
        return self.dataset[i]["name"]

    def _file(self, name: str) -> Path:
        return self.dir / f"{name}.txt"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        sample = dict(self.dataset[i])
        f = self._file(sample["name"])
        sample["caption"] = f.read_text(encoding="utf-8").strip() if f.is_file() else ""
        return sample
