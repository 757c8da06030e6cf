"""VPD's published NYUv2 depth checkpoint -> a SeeCoder-VPD folder with ``conditioning="scene"``.

Source: wl-zhao/VPD ``depth/`` (README: "Fine-tuned Model", Tsinghua Cloud), saved by
``train.py`` as ``{"model": VPDDepth.state_dict()}`` (``module.`` prefixes are stripped as
VPD's ``test.py`` does). Its modules map onto ours as follows:

* ``encoder.unet.unet.diffusion_model.*`` (ldm UNet of SD 1.5, ``out.*`` deleted by VPD) ->
  ``sd.unet`` through diffusers' own ldm converter; ``conv_norm_out``/``conv_out`` stay at the
  SD 1.5 values (or init) and are never used (we stop after the last tap, as VPD).
* ``encoder.encoder_vq.*`` (ldm AutoencoderKL, decoder deleted by VPD) -> ``sd.vae`` through
  diffusers' ldm VAE converter; the VAE decoder is not in the file and keeps diffusers' init
  (depth prediction never decodes).
* ``encoder.layer1`` (the 1/8 map: conv s2, GN, ReLU, conv s2) and ``encoder.layer2`` (1/16:
  conv s2) -> ``aggregation.adapters[i]`` of the taps with those scales;
  ``encoder.out_layer`` (1x1 conv + GN + ReLU) -> ``aggregation.out_layer``. VPD concatenates
  the maps fine to coarse (1/8, 1/16, 1/32, 1/64 upsampled); ours follow the taps, coarse to
  fine, so the input channels of the 1x1 merge conv are permuted block-wise.
* ``decoder.deconv_layers`` / ``decoder.conv_layers`` / ``last_layer_depth`` ->
  ``decoder.deconv_layers`` / ``decoder.conv_layers`` / ``decoder.last_layer_depth``
  (same indices; BatchNorm statistics included).
* ``encoder.class_embeddings`` [27, 768] (CLIP text of the NYUv2 scene names averaged over 80
  templates) -> ``scene_embeddings``; ``encoder.text_adapter.fc`` -> ``text_adapter``;
  ``encoder.gamma`` -> ``text_gamma``.

The model also uses VPD's unscaled latents (``scale_latents=False``), t = 1 and its crop of the
aggregated map on padded inputs, so the converted model computes what ``VPDDepth.forward``
computes (checked against VPD's own code at tiny size: tests/fixtures/vpd/README.md).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Union

import torch

from ...errors import CheckpointError, InputError

#: the scene classes of VPD's NYUv2 model, in the order of ``nyu_class_embeddings.pth``
#: (wl-zhao/VPD ``depth/nyu_class_list.json``)
NYU_SCENES = ["printer_room", "bathroom", "living_room", "study", "conference_room", "study_room", "kitchen",
              "home_office", "bedroom", "dinette", "playroom", "indoor_balcony", "laundry_room", "basement",
              "excercise_room", "foyer", "home_storage", "cafe", "furniture_store", "office_kitchen",
              "student_lounge", "dining_room", "reception_room", "computer_lab", "classroom", "office", "bookstore"]

UNET_PREFIX = "encoder.unet.unet.diffusion_model."
VAE_PREFIX = "encoder.encoder_vq."


def read_vpd_state(src: Union[str, Path]) -> dict:
    """``{"model": state_dict}`` (or a bare state dict) -> fp32 state dict without ``module.``."""
    path = Path(src).expanduser()
    if not path.is_file():
        raise InputError(f"{src}: no such file (expected VPD's depth checkpoint, e.g. vpd_depth_480x480.pth)")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read {path} ({type(err).__name__}: {err}) — is it VPD's depth checkpoint?") from None
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or "encoder.out_layer.0.weight" not in {k.removeprefix("module.") for k in state}:
        raise CheckpointError(f"{path} is not a VPD depth checkpoint (no encoder.out_layer.0.weight)")
    return {k.removeprefix("module."): (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def merge_permutation(tap_scales: list, tap_channels: list) -> torch.Tensor:
    """Index ``p`` with ``W_ours = W_vpd[:, p]`` for the 1x1 merge conv: VPD orders the maps by
    ascending scale (1/8 first), ours in tap order (1/64 first for SD)."""
    order = sorted(range(len(tap_scales)), key=lambda i: tap_scales[i])  # VPD's order of our taps
    start, offsets = 0, {}
    for i in order:
        offsets[i] = start
        start += tap_channels[i]
    return torch.cat([torch.arange(offsets[i], offsets[i] + tap_channels[i]) for i in range(len(tap_scales))])


def head_config(state: dict) -> dict:
    """Our head arguments implied by VPD's decoder weights."""
    deconvs = sorted(int(m.group(1)) for k in state
                     if (m := re.fullmatch(r"decoder\.deconv_layers\.(\d+)\.weight", k)) and state[k].ndim == 4)
    if not deconvs:
        raise CheckpointError("VPD checkpoint without decoder.deconv_layers")
    kernel = state[f"decoder.deconv_layers.{deconvs[0]}.weight"].shape[-1]
    if kernel != 2:
        raise CheckpointError(f"VPD decoder with {kernel}x{kernel} deconvolutions: only 2x2 (VPD's NYUv2 model) is supported")
    return dict(agg_dim=int(state["encoder.out_layer.0.weight"].shape[0]), num_deconv=len(deconvs),
                deconv_filters=int(state[f"decoder.deconv_layers.{deconvs[0]}.weight"].shape[1]),
                head_channels=int(state["decoder.conv_layers.0.weight"].shape[0]), head_norm="batch")


def head_mapping(model) -> dict:
    """``{our key: VPD key}`` for the aggregation, the decoder and the text adapter of ``model``."""
    m = {}
    for i, s in enumerate(model.tap_scales):
        adapter = model.aggregation.adapters[i]
        if isinstance(adapter, torch.nn.Identity):
            continue
        src = {8: "encoder.layer1", 16: "encoder.layer2"}.get(s)
        if src is None or model.aggregation.target_scale != 32:
            raise CheckpointError(f"tap at 1/{s} has no VPD counterpart (VPD aggregates 1/8 and 1/16 maps at 1/32)")
        for name, _ in adapter.named_parameters():
            m[f"aggregation.adapters.{i}.{name}"] = f"{src}.{name}"
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        m[f"aggregation.out_layer.{name}"] = f"encoder.out_layer.{name}"
    for name in list(dict(model.decoder.named_parameters())) + list(dict(model.decoder.named_buffers())):
        src = f"decoder.{name}" if not name.startswith("last_layer_depth.") else name
        m[f"decoder.{name}"] = src
    m.update({"scene_embeddings": "encoder.class_embeddings", "text_gamma": "encoder.gamma",
              "text_adapter.0.weight": "encoder.text_adapter.fc.0.weight",
              "text_adapter.0.bias": "encoder.text_adapter.fc.0.bias",
              "text_adapter.2.weight": "encoder.text_adapter.fc.2.weight",
              "text_adapter.2.bias": "encoder.text_adapter.fc.2.bias"})
    return m


def _config(value, default: dict, what: str) -> dict:
    if value is None:
        return dict(default)
    if isinstance(value, dict):
        return dict(value)
    path = Path(str(value)).expanduser()
    if path.is_dir():
        path = path / what / "config.json"
    if not path.is_file():
        raise InputError(f"{value}: no {what} config there (a config.json, a diffusers folder, or leave it unset for SD 1.5)")
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def build_vpd_model(state: dict, unet_config=None, vae_config=None, scene_classes: Optional[list] = None,
                    max_depth: float = 10.0, strict: bool = True):
    """A :class:`SeeCoderVPD` holding VPD's weights, and the conversion report."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from ...backbone import StableDiffusion
    from ...backbone.configs import SD15_UNET, SD_SCHEDULER, SD_VAE
    from .model import SeeCoderVPD

    ucfg = _config(unet_config, SD15_UNET, "unet")
    vcfg = _config(vae_config, SD_VAE, "vae")
    report = dict(unmapped=[], missing=[], mismatched=[], ignored=[])

    ldm_unet = {"model.diffusion_model." + k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    ldm_vae = {"first_stage_model." + k[len(VAE_PREFIX):]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    if not ldm_unet or not ldm_vae:
        raise CheckpointError("VPD checkpoint without encoder.unet / encoder.encoder_vq weights")
    unet = UNet2DConditionModel(**ucfg)
    unet_sd = convert_ldm_unet_checkpoint(ldm_unet, ucfg)
    vae = AutoencoderKL(**vcfg)
    vae_sd = convert_ldm_vae_checkpoint(ldm_vae, vcfg)
    for module, sd_, name, unused in ((unet, unet_sd, "unet", ("conv_norm_out.", "conv_out.")),
                                      (vae, vae_sd, "vae", ("decoder.",))):
        own = module.state_dict()
        bad = [f"sd.{name}.{k}: {tuple(v.shape)} vs ours {tuple(own[k].shape)}" for k, v in sd_.items()
               if k in own and own[k].shape != v.shape]
        report["mismatched"] += bad
        report["unmapped"] += [f"sd.{name}.{k}" for k in sd_ if k not in own]
        missing = [k for k in own if k not in sd_]
        report["missing"] += [f"sd.{name}.{k}" for k in missing if not k.startswith(unused)]
        report["ignored"] += [f"sd.{name}.{k} (not in VPD's file; unused)" for k in missing if k.startswith(unused)]
        if not bad:
            module.load_state_dict(sd_, strict=False)
    scheduler = DDPMScheduler(**SD_SCHEDULER, prediction_type="epsilon")
    sd = StableDiffusion(vae=vae, unet=unet, scheduler=scheduler, source="vpd")

    n_scenes = int(state["encoder.class_embeddings"].shape[0]) if "encoder.class_embeddings" in state else 0
    if scene_classes is None:
        scene_classes = NYU_SCENES if n_scenes == len(NYU_SCENES) else [f"scene{i}" for i in range(n_scenes)]
    if len(scene_classes) != n_scenes:
        raise InputError(f"{len(scene_classes)} scene_classes given, the checkpoint has {n_scenes} class embeddings")
    model = SeeCoderVPD(sd, conditioning="scene", scene_classes=list(scene_classes), max_depth=max_depth,
                        scale_latents=False, timestep=1, **head_config(state))

    mapping = head_mapping(model)
    own = model.state_dict()
    mapped = {}
    for ours, theirs in mapping.items():
        if theirs not in state:
            report["missing"].append(ours)
            continue
        v = state[theirs]
        if ours == "aggregation.out_layer.0.weight":
            v = v[:, merge_permutation(model.tap_scales, model.vpd_taps(model.sd)[1])]
        if tuple(v.shape) != tuple(own[ours].shape):
            report["mismatched"].append(f"{ours} <- {theirs}: {tuple(v.shape)} vs ours {tuple(own[ours].shape)}")
            continue
        mapped[ours] = v
    used = set(mapping.values())
    report["unmapped"] += sorted(k for k in state if k not in used and not k.startswith((UNET_PREFIX, VAE_PREFIX)))
    if strict and (report["unmapped"] or report["missing"] or report["mismatched"]):
        problems = report["unmapped"] + report["missing"] + report["mismatched"]
        raise CheckpointError(f"{len(report['unmapped'])} unmapped, {len(report['missing'])} missing, "
                              f"{len(report['mismatched'])} mis-shaped keys (first: {problems[:3]}) — "
                              "pass --opt strict=false to keep going")
    model.load_state_dict(mapped, strict=False)
    return model.eval(), report


def convert_vpd(src: str, out: str, unet_config=None, vae_config=None, scene_classes: Optional[list] = None,
                max_depth: float = 10.0, strict: bool = True, **_: object) -> dict:
    """Convert VPD's depth checkpoint ``src`` into the SeeCoder-VPD folder ``out``.

    ``unet_config`` / ``vae_config``: diffusers configs (dict, ``config.json`` or a diffusers
    folder) of the SD the checkpoint was trained from; default SD 1.5's. ``max_depth``: VPD's
    NYUv2 model uses 10 m. Returns the report (``unmapped``, ``missing``, ``mismatched``,
    ``ignored``, ``out``).
    """
    from ...utils import atomic_dir

    model, report = build_vpd_model(read_vpd_state(src), unet_config, vae_config, scene_classes, max_depth, strict)
    out_path = Path(out).expanduser()
    if out_path.exists() and any(out_path.iterdir()):
        raise InputError(f"{out_path} exists and is not empty — choose another folder")
    with atomic_dir(out_path) as tmp:
        model.save_pretrained(tmp)
    report["out"] = str(out_path)
    return report
