"""DiffSQL's self-supervised training task (Monodepth2 objective, DiffSQL Sec. 3.3, Eqs. 12-15).

A batch holds frame triplets ``frames [B,T,3,H,W]`` in [0,1] (target first, then the
sources, ``frame_ids`` e.g. ``[0,-1,1]``) and ``intrinsics [B,3,3]`` at that resolution;
``transform`` adds ``frames_aug`` (colour-jittered, the network inputs) while the losses use
the un-jittered ``frames``. Per source frame f the PoseNet sees the two frames in temporal
order — (f, 0) for f < 0 with the transform inverted, (0, f) for f > 0 — and the source is
warped into the target view with the predicted depth. Loss per scale s:
``mean(min-reprojection with auto-mask) + 1e-3 · smoothness(mean-normalised disparity) / 2^s``,
averaged over scales; all scales' depths are upsampled to the input resolution for the
photometric term (Monodepth2's "full-resolution multi-scale").
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError, InputError
from ...geometry import pose_to_matrix, warp_to_target
from ...losses.photometric import edge_aware_smoothness, min_reprojection


def _adjust_hue(img: np.ndarray, delta: float) -> np.ndarray:
    """Rotate the hue of RGB [...,3,H,W] by ``delta`` turns (a rotation about the grey axis in
    YIQ space — the linear approximation of an HSV hue shift)."""
    if delta == 0:
        return img
    a = 2 * math.pi * delta
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    m = np.linalg.inv(to_yiq) @ rot @ to_yiq
    return np.einsum("ij,...jhw->...ihw", m, img)


def color_jitter(frames: np.ndarray, rng, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1) -> np.ndarray:
    """One random colour jitter (Monodepth2's ranges) applied identically to all frames [T,3,H,W]."""
    b = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    s = rng.uniform(1 - saturation, 1 + saturation)
    h = rng.uniform(-hue, hue)
    out = frames * b
    grey = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2])  # [T,H,W]
    out = (out - grey.mean((1, 2), keepdims=True)[:, None]) * c + grey.mean((1, 2), keepdims=True)[:, None]
    grey = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2])[:, None]
    out = (out - grey) * s + grey
    out = _adjust_hue(out, h)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def median_scaled_abs_rel(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, lo: float = 1e-3,
                          hi: float = 80.0) -> float:
    """Mean over images of AbsRel after median scaling, clipped to [lo, hi], on ground truth in (lo, hi):
    what ``eval`` computes (``align(..., "median")``, ``finalize_depth``); unalignable images are left out."""
    from ...evaluation.alignment import align, finalize_depth
    from ...evaluation.metrics import abs_rel

    vals = []
    for p, g, m in zip(pred, gt, valid):
        p, g = (x.detach().cpu().double().numpy().reshape(x.shape[-2:]) for x in (p, g))
        m = m.cpu().numpy().reshape(g.shape).astype(bool) & (g > lo) & (g < hi) & np.isfinite(g)
        try:
            depth, _ = finalize_depth(align(p, g, m, "median").depth, m, lo, hi)
        except ValueError:  # no valid pixel or no positive prediction
            continue
        vals.append(abs_rel(depth, g, m))
    return float(np.mean(vals)) if vals else float("nan")


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)[..., :3]
    if rgb.dtype != np.uint8:
        rgb = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return rgb


class DiffSQLTask:
    """``task(batch) -> {"loss", "logs"}`` for :class:`~diffdepth.methods.diffsql.DiffSQL`.

    Options (``task:`` in the recipe): ``frame_ids`` (default [0,-1,1]), ``ssim_weight`` α
    (0.85), ``smoothness`` (1e-3), ``automask`` (True), ``jitter`` (probability 0.5 of
    colour jitter), ``flip`` (probability 0.5 of a horizontal flip of the whole triplet).
    """

    def __init__(self, model, frame_ids: Sequence[int] = (0, -1, 1), ssim_weight: float = 0.85,
                 smoothness: float = 1e-3, automask: bool = True, jitter: float = 0.5, flip: float = 0.5):
        self.model = model
        self.frame_ids = [int(f) for f in frame_ids]
        if not self.frame_ids or self.frame_ids[0] != 0 or len(self.frame_ids) < 2:
            raise ConfigError(f"diffsql task: frame_ids must start with the target 0 and name at least one source, "
                              f"got {list(frame_ids)}")
        self.alpha = float(ssim_weight)
        self.smoothness = float(smoothness)
        self.automask = bool(automask)
        self.jitter = float(jitter)
        self.flip = float(flip)

    # ------------------------------------------------------------------ augmentation
    def transform(self, sample: Dict[str, Any], rng) -> Dict[str, Any]:
        """Resize to the model's ``fixed_input_size`` (frames, intrinsics, depth; a no-op when the
        reader already gives that size), then flip and colour-jitter a triplet with one set of
        random parameters; the jittered copy goes to ``frames_aug`` (network input), ``frames``
        stays clean for the losses (Monodepth2)."""
        if "frames" not in sample:
            raise InputError("diffsql training needs frame sequences (samples with 'frames'); use a "
                             "kitti_raw / video_folder / synth kind: sequence dataset")
        size = getattr(self.model, "fixed_input_size", None)
        if size is not None and tuple(np.shape(sample["frames"])[-2:]) != tuple(size):
            # the network is trained at exactly its input size (Monodepth2: 640x192, resized, not
            # cropped or padded); intrinsics are scaled with the frames
            from ...data.folder import resize_sample

            sample = resize_sample({k: (np.asarray(v) if isinstance(v, torch.Tensor) else v)
                                    for k, v in sample.items()}, size)
        out = dict(sample)
        frames = np.asarray(sample["frames"], dtype=np.float32)  # [T,3,H,W]
        if rng.random() < self.flip:
            frames = frames[..., ::-1].copy()
            K = np.array(sample["intrinsics"], dtype=np.float32, copy=True)
            w = frames.shape[-1]
            K[0, 2] = (w - 1) - K[0, 2]  # mirror the principal point (integer pixel centres)
            out["intrinsics"] = K
            for key in ("depth", "valid"):
                if key in sample and sample[key] is not None:
                    out[key] = np.ascontiguousarray(np.asarray(sample[key])[..., ::-1])
            if sample.get("poses") is not None:  # mirrored world: P' = S P S with S = diag(-1, 1, 1, 1)
                S = np.diag([-1.0, 1.0, 1.0, 1.0]).astype(np.float32)
                out["poses"] = S @ np.asarray(sample["poses"], dtype=np.float32) @ S
        aug = color_jitter(frames, rng) if rng.random() < self.jitter else frames
        out["frames"] = torch.from_numpy(np.ascontiguousarray(frames))
        out["frames_aug"] = torch.from_numpy(np.ascontiguousarray(aug))
        for key in ("intrinsics", "depth", "valid", "poses"):
            if key in out and isinstance(out[key], np.ndarray):
                out[key] = torch.from_numpy(np.ascontiguousarray(out[key]))
        return out

    # ------------------------------------------------------------------ loss
    def _ids(self, batch) -> list:
        """Frame ids of the batch: a [B,T] tensor, the default collate's list of T [B] tensors,
        a list of per-sample lists, or one list; absent -> the task's ``frame_ids``."""
        ids = batch.get("frame_ids")
        if ids is None:
            return self.frame_ids
        if isinstance(ids, torch.Tensor):
            return [int(i) for i in (ids[0] if ids.dim() == 2 else ids).tolist()]
        ids = list(ids)
        if ids and isinstance(ids[0], torch.Tensor):
            return [int(i.reshape(-1)[0]) for i in ids]
        if ids and isinstance(ids[0], (list, tuple)):
            return [int(i) for i in ids[0]]
        return [int(i) for i in ids]

    def poses(self, aug: torch.Tensor, ids: Sequence[int]) -> Dict[int, torch.Tensor]:
        """aug [B,T,3,H,W] -> {frame id: T_target->source [B,4,4]} from the PoseNet (Monodepth2)."""
        out = {}
        for k, f in enumerate(ids):
            if f == 0:
                continue
            if f < 0:
                aa, t = self.model.pose_net(aug[:, k], aug[:, 0])
            else:
                aa, t = self.model.pose_net(aug[:, 0], aug[:, k])
            out[k] = pose_to_matrix(aa, t, invert=f < 0)
        return out

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        p = next(self.model.parameters())
        frames = batch["frames"].to(device=p.device, dtype=p.dtype)  # [B,T,3,H,W]
        aug = batch.get("frames_aug", batch["frames"]).to(device=p.device, dtype=p.dtype)
        K = batch["intrinsics"].to(device=p.device, dtype=p.dtype)  # [B,3,3]
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise InputError(f"diffsql task: frames must be [B,T,3,H,W], got {tuple(frames.shape)}")
        ids = self._ids(batch)
        if len(ids) != frames.shape[1]:
            raise InputError(f"diffsql task: {frames.shape[1]} frames but frame_ids {ids}")
        if ids[0] != 0:
            raise InputError(f"diffsql task: the first frame must be the target (id 0), got ids {ids}")
        b, t, _, h, w = frames.shape
        out = self.model(aug[:, 0])
        depths = [out["depth"]] + list(out["aux_depth"])  # scale 0 (stride 2), 1.. (strides 4, 8, 16)
        transforms = self.poses(aug, ids)
        target = frames[:, 0]
        sources = [frames[:, k] for k in transforms]
        total = 0.0
        logs: Dict[str, Any] = {}
        full = None
        for s, depth in enumerate(depths):
            depth_full = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)  # [B,1,H,W]
            if s == 0:
                full = depth_full
            warped = [warp_to_target(frames[:, k], depth_full, K, T)[0] for k, T in transforms.items()]
            loss_map, mask = min_reprojection(target, warped, sources if self.automask else None, alpha=self.alpha)
            photo = loss_map.mean()
            disp = 1.0 / depth.clamp_min(1e-6)
            colour = target if disp.shape[-2:] == (h, w) else F.interpolate(target, size=disp.shape[-2:],
                                                                              mode="area")
            if s == 0:  # smoothness at the input resolution for scale 0 (Monodepth2)
                disp, colour = 1.0 / depth_full.clamp_min(1e-6), target
            smooth = edge_aware_smoothness(disp, colour)
            total = total + photo + self.smoothness * smooth / (2 ** s)
            if s == 0:
                logs["photometric"] = photo.detach()
                logs["smoothness"] = smooth.detach()
                logs["automask_kept"] = mask.float().mean().detach()
        loss = total / len(depths)
        logs["depth_mean"] = full.detach().mean()
        if "depth" in batch and batch["depth"] is not None:
            gt = batch["depth"].to(p.device)
            gt = gt[:, 0] if gt.dim() == 5 else gt  # [B,1,H,W] of the target frame
            valid = batch.get("valid")
            valid = (gt > 0) if valid is None else valid.to(p.device)
            valid = valid[:, 0] if valid.dim() == 5 else valid
            logs["abs_rel_median"] = median_scaled_abs_rel(full.detach(), gt, valid, hi=float(gt.max()) + 1)
        return {"loss": loss, "logs": logs, "depth": full.detach(), "warped": [w_.detach() for w_ in warped],
                "automask": mask.detach()}

    # ------------------------------------------------------------------ images
    def visualize(self, batch: Dict[str, Any], output: Dict[str, Any]) -> Dict[str, np.ndarray]:
        """Target frame, its first warped source and the predicted disparity (first sample)."""
        def rgb(x):
            return (x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)

        images = {"target": rgb(batch["frames"][0, 0])}
        if output.get("warped"):
            images["warped_source"] = rgb(output["warped"][0][0])
        if output.get("depth") is not None:
            disp = 1.0 / output["depth"][0, 0].float().clamp_min(1e-6)
            disp = (disp - disp.min()) / (disp.max() - disp.min() + 1e-8)
            from ...io.colormaps import turbo

            images["disparity"] = _to_uint8(turbo(disp.cpu().numpy()))
        if output.get("automask") is not None:
            m = (output["automask"][0, 0].float().cpu().numpy() * 255).astype(np.uint8)
            images["automask"] = np.stack([m, m, m], -1)
        return images
