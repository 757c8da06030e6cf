"""PrimeDepth training task (paper Sec. 3.4): SSI-MSE in pixel space + Dice/focal regulariser.

``task(batch) -> {"loss", "logs"}`` for :mod:`diffdepth.training`. Targets:

* ground truth depth from the dataset (``target: depth`` — converted to disparity, the
  model's output space; ``target: disparity`` when the labels already are disparities),
* pseudo labels from a folder of teacher predictions, one ``<name>.npy`` per sample
  (``pseudo_labels: DIR``, ``pseudo_kind: disparity|depth``), read in ``transform``,
* pseudo labels from any depth-model callable (``teacher: "module:function"`` or a callable
  ``images [B,3,H,W] -> [B,1,H,W]``, ``teacher_kind``), run on each batch without gradients.

A reader may give each sample its own ``label_kind`` (``depth``/``disparity``, e.g. the
``pseudo_labels`` reader); labels are turned into disparity per sample in ``transform``.

Segmentation labels (``segmentation`` key, int class map, 255 = ignore) are optional. The
trainer calls :meth:`PrimeDepthTask.bind_data` with the training readers: when none of them
yields ``segmentation``, the segmentation head is frozen (``requires_grad=False``), so it is
neither in the optimiser nor in DDP's gradient reduction, and the loss is L_ssi alone. When
some reader has labels, every batch runs the head: batches with labelled pixels use Eq. 5
(dynamic weighting, Dice + focal as printed in Eq. 4 by default), batches without add
``0 · Σ logits`` so every process reduces the same parameters.
The SD weights never change: they have ``requires_grad=False`` and the UNet runs under
``torch.no_grad`` inside :meth:`PrimeDepth.refine`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError, InputError
from ...geometry import depth_to_disparity
from ...losses.latent import latent_valid_mask, masked_latent_mse
from ...losses.segmentation import FOCAL_REDUCTIONS, IGNORE_INDEX, primedepth_loss
from ...losses.ssi import ssi_mse_loss

KINDS = ("depth", "disparity")


def _load_callable(spec: Union[str, Callable, None]) -> Optional[Callable]:
    if spec is None or callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    if not name:
        raise ConfigError(f"teacher {spec!r} must be 'module:function' or a callable")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import teacher {spec!r} ({err})") from None


def to_disparity(values: torch.Tensor, valid: torch.Tensor, kind: str):
    """Labels in ``kind`` -> (disparity, valid): depth is inverted where > 0."""
    valid = valid & torch.isfinite(values)
    if kind == "disparity":
        return torch.where(valid, values, 0.0), valid
    valid = valid & (values > 0)
    return depth_to_disparity(torch.where(valid, values, 0.0)), valid


class PrimeDepthTask:
    def __init__(self, model, target: str = "depth", pseudo_labels: Optional[str] = None,
                 pseudo_kind: str = "disparity", teacher: Union[str, Callable, None] = None,
                 teacher_kind: str = "disparity", crop: Optional[Sequence[int]] = None, flip_prob: float = 0.5,
                 use_captions: bool = True, segmentation: bool = True, ignore_index: int = IGNORE_INDEX,
                 focal_gamma: float = 2.0, dice_smooth: float = 0.0, focal_reduction: str = "sum"):
        for name, kind in (("target", target), ("pseudo_kind", pseudo_kind), ("teacher_kind", teacher_kind)):
            if kind not in KINDS:
                raise ConfigError(f"task.{name} must be one of {KINDS}, got {kind!r}")
        if pseudo_labels is not None and not Path(pseudo_labels).is_dir():
            raise ConfigError(f"task.pseudo_labels: {pseudo_labels} is not a folder of <name>.npy predictions")
        if focal_reduction not in FOCAL_REDUCTIONS:
            raise ConfigError(f"task.focal_reduction must be one of {FOCAL_REDUCTIONS} (sum = Eq. 4 as printed), "
                              f"got {focal_reduction!r}")
        if float(dice_smooth) < 0:
            raise ConfigError(f"task.dice_smooth must be >= 0 (0 = Eq. 4 as printed), got {dice_smooth!r}")
        if crop is not None and (len(crop) != 2 or min(crop) <= 0):
            raise ConfigError(f"task.crop must be [height, width], got {crop!r}")
        if crop is not None and any(int(c) % model.size_multiple for c in crop):
            raise ConfigError(f"task.crop {list(crop)} must be multiples of {model.size_multiple}")
        self.model = model
        self.target = target
        self.pseudo_dir = Path(pseudo_labels) if pseudo_labels else None
        self.pseudo_kind = pseudo_kind
        self.teacher = _load_callable(teacher)
        self.teacher_kind = teacher_kind
        self.crop = tuple(int(c) for c in crop) if crop is not None else None
        self.flip_prob = float(flip_prob)
        self.use_captions = use_captions
        self.segmentation = segmentation and model.seg_head is not None
        self.ignore_index = ignore_index
        self.gamma = focal_gamma
        self.dice_smooth = float(dice_smooth)
        self.focal_reduction = focal_reduction
        #: None until bind_data: run the head only on batches with labels (single-process use)
        self.seg_active: Optional[bool] = None

    # ------------------------------------------------------------------ trainer hook
    def bind_data(self, datasets: Sequence[Any]) -> list:
        """Decide once whether the segmentation regulariser is active for these readers.

        Active when segmentation is enabled, the model has a head and at least one reader's
        first sample carries ``segmentation``. Inactive: the head is frozen, so it gets no
        optimiser state and DDP does not expect its gradients. Returns log lines.
        """
        if self.model.seg_head is None:
            self.seg_active = False
            return ["segmentation regulariser: off (the model has no segmentation head)"]
        with_labels = [i for i, ds in enumerate(datasets) if len(ds) and "segmentation" in ds[0]]
        self.seg_active = bool(self.segmentation and with_labels)
        if not self.seg_active:
            self.model.seg_head.requires_grad_(False)
            why = "task.segmentation is false" if not self.segmentation else "no training reader has labels"
            return [f"segmentation regulariser: off ({why}); the segmentation head is frozen and left out "
                    f"of the optimiser; loss = L_ssi"]
        self.model.seg_head.requires_grad_(True)
        return [f"segmentation regulariser: on (labels in data.train {with_labels}; Dice smooth "
                f"{self.dice_smooth:g}, focal {self.focal_reduction}, dynamic weighting Eq. 5)"]

    # ------------------------------------------------------------------ per-sample (DataLoader workers)
    def transform(self, sample: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        sample = dict(sample)
        image = torch.as_tensor(sample["image"]).float()
        h, w = image.shape[-2:]
        if self.pseudo_dir is not None:
            file = self.pseudo_dir / f"{sample['name']}.npy"
            try:
                label = np.load(file, allow_pickle=False).astype(np.float32)
            except (OSError, ValueError) as err:
                raise InputError(f"cannot read pseudo label {file} ({err})") from None
            label = torch.from_numpy(np.squeeze(label))
            if label.dim() != 2:
                raise InputError(f"pseudo label {file} must be a [H,W] array, got {tuple(label.shape)}")
            if tuple(label.shape) != (h, w):
                label = F.interpolate(label[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            sample["depth"] = label[None]
            sample["valid"] = torch.isfinite(label)[None]
            kind = self.pseudo_kind
        else:
            kind = sample.get("label_kind", self.target)
        if kind not in KINDS:
            raise InputError(f"sample {sample.get('name')}: label_kind must be one of {KINDS}, got {kind!r}")
        if "depth" in sample:  # labels -> disparity, the model's output space, per sample
            depth = torch.as_tensor(sample["depth"]).float()
            valid = torch.as_tensor(sample.get("valid", torch.isfinite(depth))).bool()
            sample["depth"], sample["valid"] = to_disparity(depth, valid, kind)
        sample["label_kind"] = "disparity"
        if self.segmentation and self.seg_active is not False:
            seg = sample.get("segmentation")
            seg = (torch.full((1, h, w), self.ignore_index, dtype=torch.long) if seg is None
                   else torch.as_tensor(seg).long().reshape(1, h, w))
            sample["segmentation"] = seg
        else:  # labels the task does not use never reach the batch
            sample.pop("segmentation", None)
        if self.use_captions:  # every sample has one (empty = the empty prompt), so readers mix
            sample["caption"] = str(sample.get("caption") or "")
        else:
            sample.pop("caption", None)
        keys = [k for k in ("image", "depth", "valid", "segmentation") if k in sample]
        sample["image"] = image
        if self.crop is not None:
            ch, cw = self.crop
            if h < ch or w < cw:  # upscale so the crop fits
                s = max(ch / h, cw / w)
                nh, nw = int(np.ceil(h * s)), int(np.ceil(w * s))
                for k in keys:
                    x = sample[k]
                    mode = "bilinear" if k in ("image", "depth") else "nearest"
                    x = F.interpolate(x[None].float(), size=(nh, nw), mode=mode,
                                      **({"align_corners": False} if mode == "bilinear" else {}))[0]
                    sample[k] = x.to(sample[k].dtype)
                h, w = nh, nw
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            for k in keys:
                sample[k] = sample[k][..., top:top + ch, left:left + cw]
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            for k in keys:
                sample[k] = sample[k].flip(-1)
        for k in keys:
            sample[k] = sample[k].contiguous()
        sample.pop("intrinsics", None)  # flips/crops invalidate it and the task does not use it
        return sample

    # ------------------------------------------------------------------ one step
    def targets(self, batch: Dict[str, Any], images: torch.Tensor):
        if self.teacher is not None:
            with torch.no_grad():
                values = torch.as_tensor(self.teacher(images)).to(images.device).float()
            if values.dim() == 3:
                values = values[:, None]
            return to_disparity(values, torch.ones_like(values, dtype=torch.bool), self.teacher_kind)
        if "depth" not in batch:
            raise InputError("the batch has no depth labels; set task.pseudo_labels or task.teacher")
        kinds = batch.get("label_kind", self.target)
        kinds = set(kinds) if isinstance(kinds, (list, tuple)) else {kinds}
        if len(kinds) != 1:
            raise InputError(f"one batch mixes label kinds {sorted(kinds)}; convert them in transform")
        kind = kinds.pop()
        values = batch["depth"].to(images.device).float()
        valid = batch.get("valid")
        valid = torch.ones_like(values, dtype=torch.bool) if valid is None else valid.to(images.device).bool()
        return to_disparity(values, valid, kind)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        model = self.model
        ref = next(model.refiner.parameters())
        images = batch["image"].to(device=ref.device, dtype=ref.dtype)
        disp, valid = self.targets(batch, images)
        prompts = batch.get("caption") if self.use_captions else None
        if isinstance(prompts, str):
            prompts = [prompts] * images.shape[0]
        use_seg = self.segmentation and model.seg_head is not None and self.seg_active is not False
        seg_labels = batch.get("segmentation") if use_seg else None
        if seg_labels is not None:
            seg_labels = seg_labels.to(images.device)
            if not bool((seg_labels != self.ignore_index).any()):
                seg_labels = None
        run_head = seg_labels is not None or bool(self.seg_active)
        out = model(images, prompts=prompts, with_segmentation=run_head)
        if "disparity" in out:
            depth_loss = ssi_mse_loss(out["disparity"].float(), disp, valid)
        else:
            depth_loss = self._latent_loss(out["latent"], disp, valid)
        terms = primedepth_loss(depth_loss, out.get("segmentation"), seg_labels, self.gamma, self.ignore_index,
                                dice_smooth=self.dice_smooth, focal_reduction=self.focal_reduction)
        if run_head and seg_labels is None:  # no labelled pixel here: same graph on every process, zero gradient
            terms["loss"] = terms["loss"] + 0.0 * out["segmentation"].float().sum()
        logs = {k: float(v) for k, v in terms.items() if k != "loss"}
        return {"loss": terms["loss"], "logs": logs, "output": out}

    def _latent_loss(self, latent: torch.Tensor, disp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Ablation V.Latent: MSE to the frozen VAE's latent of the per-image min-max normalised disparity."""
        sd = self.model.sd
        with torch.no_grad():
            norm = torch.zeros_like(disp)
            for i in range(disp.shape[0]):
                v = disp[i][valid[i]]
                if v.numel() >= 2 and float(v.max() - v.min()) > 0:
                    norm[i] = ((disp[i] - v.min()) / (v.max() - v.min())).clamp(0, 1) * valid[i]
            target = sd.encode_image(norm.expand(-1, 3, -1, -1))  # [B,4,h,w]
            lmask = latent_valid_mask(valid, sd.latent_factor)
        if not bool(lmask.any()):
            raise InputError("no latent cell has a fully valid label; the latent loss is undefined")
        return masked_latent_mse(latent, target, lmask)

    def visualize(self, batch: Dict[str, Any], output: Dict[str, Any]) -> Dict[str, np.ndarray]:
        disp = output.get("output", {}).get("disparity") if isinstance(output, dict) else None
        if disp is None:
            return {}
        d = disp[0, 0].detach().float().cpu().numpy()
        d = (d - d.min()) / max(float(d.max() - d.min()), 1e-8)
        g = (d * 255).astype(np.uint8)
        return {"disparity": np.stack([g, g, g], -1)}
