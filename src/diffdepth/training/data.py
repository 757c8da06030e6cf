"""Training data: dataset factory, reproducible weighted mixing, per-sample transforms.

The sample stream
-----------------
The training data is one infinite stream of positions ``g = 0, 1, 2, ...``. Position
``g`` maps to ``(dataset k, sample i)`` by a pure function of ``(seed, weights,
dataset lengths, g)``:

* positions come in blocks of :data:`BLOCK`; in block ``b`` the dataset of every
  position is drawn with ``numpy.random.default_rng([seed, b]).choice(K, p=weights)``;
* dataset ``k`` is read in epochs: its ``c``-th draw is sample
  ``permutation_e[c mod n_k]`` with ``e = c // n_k`` and
  ``permutation_e = default_rng([seed, 1 + k, e]).permutation(n_k)``.

A micro-batch of ``P`` processes takes positions ``[m·B·P, (m+1)·B·P)`` and process
``r`` reads ``[m·B·P + r·B, m·B·P + (r+1)·B)``. The only sampler state is therefore the
number of micro-batches consumed, saved in every checkpoint: a resumed run reads
exactly the samples an uninterrupted run would have read next.

Per-sample transforms (``task.transform(sample, rng)``, run in the DataLoader
workers) get ``rng = numpy.random.default_rng([seed, 7, g])``, so augmentations
depend on the position only — not on the worker, the number of workers or resumption.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ConfigError, InputError

#: positions per block of dataset choices
BLOCK = 1024

#: config ``type:`` -> reader class ("module:Class"), imported lazily
DATASET_TYPES: Dict[str, str] = {
    "folder": "diffdepth.data.folder:FolderDepthDataset",
    "hypersim": "diffdepth.data.training_sets:HypersimDataset",
    "vkitti2": "diffdepth.data.training_sets:VirtualKitti2Dataset",
    "tartanair": "diffdepth.data.training_sets:TartanAirDataset",
    "kitti_raw": "diffdepth.data.sequences:KittiRawSequences",
    "video_folder": "diffdepth.data.sequences:VideoFolderSequences",
    "pseudo_labels": "diffdepth.data.pseudo:PseudoLabelDataset",
}

#: reader options that produce missing labels before the reader opens (``pseudo_labels``)
PREPARE_KEYS = ("teacher", "captioner", "device")

#: synth ``kind`` -> reader type used to read the rendered folder (``diffdepth synth`` layouts)
SYNTH_READERS = {"indoor": "folder", "outdoor": "folder", "sequence": "kitti_raw"}


def _import_target(target: str, what: str):
    module, _, name = target.partition(":")
    if not module or not name:
        raise ConfigError(f"{what}: {target!r} is not a known type nor a 'module:Class' path")
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{what}: cannot import {module!r} ({err})") from None
    try:
        return getattr(mod, name)
    except AttributeError:
        raise ConfigError(f"{what}: module {module!r} has no {name!r}") from None


def reader_class(type_name: str, where: str = "dataset"):
    target = DATASET_TYPES.get(type_name, type_name)
    if ":" not in target:
        known = ", ".join(sorted(DATASET_TYPES) + ["synth"])
        raise ConfigError(f"{where}: unknown dataset type {type_name!r}; use one of {known} or 'module:Class'")
    return _import_target(target, where)


# ---------------------------------------------------------------------------- synth
def synth_folder(entry: Dict[str, Any], cache_dir: Path) -> Tuple[Path, str, Dict[str, Any]]:
    """Render a ``synth`` dataset once (cached by its arguments); returns (folder, reader type, reader args)."""
    args = {k: v for k, v in entry.items() if k not in ("type", "weight", "limit")}
    kind = args.pop("kind", "indoor")
    if kind not in SYNTH_READERS:
        raise ConfigError(f"synth dataset: kind must be one of {', '.join(SYNTH_READERS)}, got {kind!r}")
    n = int(args.pop("n", 16))
    size = args.pop("size", [64, 64])
    seed = int(args.pop("seed", 0))
    reader_args = args.pop("reader", {}) or {}
    render_args = args  # anything else goes to the renderer (e.g. layout: pseudo)
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise ConfigError(f"synth dataset: size must be [H, W], got {size!r}")
    key = json.dumps({"kind": kind, "n": n, "size": list(size), "seed": seed, **render_args}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    folder = Path(cache_dir) / f"synth-{kind}-{n}-{size[0]}x{size[1]}-s{seed}-{digest}"
    from .. import distributed

    # every process reaches the barrier: a process that starts late and already sees
    # .complete must not skip it (the others would wait at it forever)
    if not (folder / ".complete").exists() or distributed.is_distributed():
        from ..utils import atomic_dir

        if distributed.is_main() and not (folder / ".complete").exists():
            render = _import_target("diffdepth.data.synth:write_dataset", "synth dataset")
            with atomic_dir(folder) as tmp:
                try:
                    render(tmp, kind=kind, n=n, size=tuple(size), seed=seed, **render_args)
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"synth dataset {entry}: {err}") from None
                (tmp / ".complete").write_text(key)
        distributed.barrier()
    reader_args = dict(reader_args)
    if kind == "sequence":  # Monodepth2-style training split written by the renderer
        split = reader_args.pop("split", "train")
        reader_args.setdefault("split_file", str(folder / f"{split}_files.txt"))
    elif reader_args.get("split_file"):
        reader_args["split_file"] = str(folder / reader_args["split_file"])
    if render_args.get("layout") == "pseudo":  # images + teacher depth + segmentation + captions
        return folder, "pseudo_labels", reader_args
    return folder, SYNTH_READERS[kind], reader_args


def build_dataset(entry: Dict[str, Any], cache_dir: Optional[Path] = None, where: str = "dataset") -> Dataset:
    """A reader for one config entry ``{type, weight, limit, ...reader args}``."""
    entry = dict(entry)
    type_name = entry.get("type")
    args = {k: v for k, v in entry.items() if k not in ("type", "weight", "limit")}
    if type_name == "synth":
        if cache_dir is None:
            raise ConfigError(f"{where}: a synth dataset needs data.cache_dir or a run folder")
        root, type_name, args = synth_folder(entry, Path(cache_dir))
        args = {"root": str(root), **args}
    if type_name == "pseudo_labels" and any(k in args for k in PREPARE_KEYS):
        from ..data.pseudo import prepare_pseudo_labels

        prep = {k: args.pop(k) for k in PREPARE_KEYS if k in args}
        if args.get("root") is None:
            raise ConfigError(f"{where}: a pseudo_labels dataset needs root")
        prepare_pseudo_labels(args["root"], images=args.get("images", "images"), depth=args.get("depth", "depth"),
                              captions=args.get("captions"), **prep)
    captioning = None
    if type_name != "pseudo_labels" and ("captioner" in args or "captions_dir" in args):
        captioning = (args.pop("captioner", None), args.pop("captions_dir", None), args.pop("device", "auto"))
    cls = reader_class(type_name, where)
    if "root" in args and args["root"] is None:
        raise ConfigError(f"{where}.root is not set: {type_name} needs the folder of its data, "
                          f"e.g. {where}.root=/data/{type_name}")
    try:
        ds = cls(**args)
    except TypeError as err:
        raise ConfigError(f"{where}: {type_name} reader rejected its arguments ({err})") from None
    if captioning is not None:  # any reader: captions/<sample name>.txt, made once by the captioner
        from ..data.pseudo import CaptionedDataset

        captioner, cap_dir, device = captioning
        if cap_dir is None:
            if args.get("root") is None:
                raise ConfigError(f"{where}: captioner needs captions_dir (or a reader with root)")
            cap_dir = Path(args["root"]) / "captions"
        ds = CaptionedDataset(ds, cap_dir, captioner, device=device)
    limit = entry.get("limit")
    if limit is not None:
        ds = _Limited(ds, int(limit))
    if len(ds) == 0:
        raise InputError(f"{where}: dataset {type_name} {args} is empty")
    return ds


class _Limited(Dataset):
    """The first ``limit`` samples of a dataset."""

    def __init__(self, ds: Dataset, limit: int):
        self.ds = ds
        self.n = min(limit, len(ds))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.ds[i]


# ---------------------------------------------------------------------------- mixing
class MixingPlan:
    """Position ``g`` -> (dataset index, sample index); see module docstring."""

    def __init__(self, lengths: Sequence[int], weights: Sequence[float], seed: int):
        if len(lengths) != len(weights) or not lengths:
            raise ValueError("need one weight per dataset")
        if any(n <= 0 for n in lengths):
            raise ValueError(f"empty dataset in mix (lengths {list(lengths)})")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        self.p = w / w.sum()
        self.lengths = [int(n) for n in lengths]
        self.seed = int(seed)
        self._perm_cache: Dict[Tuple[int, int], np.ndarray] = {}

    def block_choices(self, block: int) -> np.ndarray:
        if len(self.lengths) == 1:
            return np.zeros(BLOCK, dtype=np.int64)
        rng = np.random.default_rng([self.seed, block])
        return rng.choice(len(self.lengths), size=BLOCK, p=self.p)

    def _perm(self, k: int, epoch: int) -> np.ndarray:
        key = (k, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 64:
                self._perm_cache.clear()
            perm = np.random.default_rng([self.seed, 1 + k, epoch]).permutation(self.lengths[k])
            self._perm_cache[key] = perm
        return perm

    def iterate(self, start: int = 0) -> Iterator[Tuple[int, int, int]]:
        """Yield ``(g, k, i)`` for ``g = start, start+1, ...`` (forever)."""
        counts = np.zeros(len(self.lengths), dtype=np.int64)
        block = 0
        first_block = start // BLOCK
        while block < first_block:  # count the draws of every dataset before ``start``
            counts += np.bincount(self.block_choices(block), minlength=len(self.lengths))
            block += 1
        g = block * BLOCK
        while True:
            choices = self.block_choices(block)
            for k in choices:
                k = int(k)
                c = int(counts[k])
                counts[k] += 1
                if g >= start:
                    n = self.lengths[k]
                    yield g, k, int(self._perm(k, c // n)[c % n])
                g += 1
            block += 1

    def take(self, start: int, count: int) -> List[Tuple[int, int, int]]:
        out = []
        for item in self.iterate(start):
            out.append(item)
            if len(out) == count:
                break
        return out


class StreamSampler(Sampler):
    """This process's share of the mixed stream, from micro-batch ``start_micro`` on.

    Yields keys ``(g, k, i)`` for :class:`MixedDataset`. Infinite.
    """

    def __init__(self, plan: MixingPlan, batch_size: int, rank: int = 0, world: int = 1, start_micro: int = 0):
        self.plan = plan
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world = int(world)
        self.start_micro = int(start_micro)

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:
        span = self.batch_size * self.world
        lo = self.rank * self.batch_size
        for g, k, i in self.plan.iterate(self.start_micro * span):
            if lo <= g % span < lo + self.batch_size:
                yield (g, k, i)

    def __len__(self) -> int:  # pragma: no cover - infinite; DataLoader only needs it for len()
        raise TypeError("StreamSampler is infinite")


class MixedDataset(Dataset):
    """Index with ``(g, k, i)``: sample ``i`` of dataset ``k``, transformed with a position-seeded RNG."""

    def __init__(self, datasets: Sequence[Dataset], names: Sequence[str], seed: int,
                 transform: Optional[Callable] = None):
        self.datasets = list(datasets)
        self.names = list(names)
        self.seed = int(seed)
        self.transform = transform

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key):
        g, k, i = key
        try:
            sample = self.datasets[k][i]
        except InputError as err:
            raise InputError(f"training sample {i} of {self.names[k]}: {err}") from None
        if self.transform is not None:
            sample = self.transform(sample, np.random.default_rng([self.seed, 7, g]))
        return sample


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: MixedDataset, sampler: StreamSampler, collate: Optional[Callable],
                num_workers: int, prefetch_factor: int = 2, pin_memory: bool = False, seed: int = 0) -> DataLoader:
    """The training DataLoader. Its own generator keeps the global torch RNG untouched
    (DataLoader would otherwise draw worker seeds from it), so starting an iterator
    never changes the task's random stream."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    kwargs: Dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=False, worker_init_fn=_worker_init)
    return DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, pin_memory=pin_memory, generator=gen, drop_last=False, **kwargs)
