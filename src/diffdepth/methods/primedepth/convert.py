"""Convert the official PrimeDepth checkpoint (vislearn/PrimeDepth, hub CVL-Heidelberg/PrimeDepth).

The official file is an LDM-style ``.ckpt`` whose ``state_dict`` holds

* ``model.diffusion_model.*`` — the SD 2.1 UNet (LDM naming),
* ``first_stage_model.*`` — the VAE, ``cond_stage_model.model.*`` — the OpenCLIP text encoder,
* ``labeller.*`` — PrimeDepth: ``convs_features.i`` / ``convs_attentions.i`` / ``convs_merge.i``
  (1x1 fusion convs per decoder layer), ``refiner.output_blocks.i.{0: ResBlock, 1: SpatialTransformer,
  1|2: Upsample}``, ``refiner.out.{0,2}``, ``depth_predictor.*`` and ``label_predictor.*``
  (LDM ``Decoder`` heads),
* DDPM schedule buffers (``betas``, ``alphas_cumprod``, ...), which are ignored.

Tensors are read without executing pickled code: ``torch.load(weights_only=True)``; classes
the checkpoint pickles besides tensors (e.g. OmegaConf hyper-parameters) are replaced by inert
stubs that only absorb their state. ``.safetensors`` files are read directly.
SD keys go through diffusers' single-file converters; PrimeDepth keys are renamed here.
"""
from __future__ import annotations

import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ...errors import CheckpointError
from .layout import OFFICIAL_OPTIONS
from .model import PrimeDepth

#: DDPM buffers and training bookkeeping in LDM checkpoints that carry no model weights
IGNORED = re.compile(r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_\w+|log_one_minus_alphas_cumprod|"
                     r"posterior_\w+|logvar|model_ema\.\w+|cond_stage_model\.model\.logit_scale|"
                     r"cond_stage_model\.model\.text_projection|cond_stage_model\.model\.transformer\.resblocks\.23\..*)$")


# ---------------------------------------------------------------------------------------------- loading
class _Inert:
    """Stand-in for any non-tensor class in a checkpoint: accepts and ignores its state."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()


def load_checkpoint_tensors(path: str | Path, max_stubs: int = 64) -> Dict[str, torch.Tensor]:
    """The flat ``state_dict`` of a ``.ckpt``/``.pt``/``.safetensors`` file, read without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file — pass the official PrimeDepth .ckpt")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            data: Any = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - one clear line for any corrupt file
            raise CheckpointError(f"cannot read {path} as safetensors ({type(err).__name__}: {err})") from None
    else:
        stubs: List[Tuple[type, str]] = []
        while True:
            try:
                with torch.serialization.safe_globals(stubs):
                    data = torch.load(str(path), map_location="cpu", weights_only=True)
                break
            except pickle.UnpicklingError as err:
                m = re.search(r"GLOBAL ([\w.]+)", str(err))
                if m is None or len(stubs) >= max_stubs:
                    raise CheckpointError(f"cannot read {path} safely: {str(err).splitlines()[0]}") from None
                name = m.group(1)
                stub = type(name.rsplit(".", 1)[-1], (_Inert,), {})
                stubs.append((stub, name))
            except (RuntimeError, OSError, EOFError) as err:
                raise CheckpointError(f"cannot read {path} ({str(err).splitlines()[0]}) — is it a torch checkpoint?") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds no state_dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------------------------------------- key maps
_LDM_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}


def ldm_decoder_map(decoder: torch.nn.Module, prefix: str = "") -> Dict[str, Tuple[str, bool]]:
    """diffusers ``Decoder`` key -> (LDM ``Decoder`` key, is 1x1-conv-as-linear) for every parameter."""
    out: Dict[str, Tuple[str, bool]] = {}
    n = len(decoder.up_blocks)
    for key in decoder.state_dict().keys():
        parts = key.split(".")
        ldm, conv_linear = None, False
        if parts[0] in ("conv_in", "conv_out"):
            ldm = key
        elif parts[0] == "conv_norm_out":
            ldm = "norm_out." + parts[1]
        elif parts[0] == "mid_block":
            if parts[1] == "resnets":
                ldm = f"mid.block_{int(parts[2]) + 1}.{_LDM_RES[parts[3]]}.{parts[4]}"
            else:  # attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}.{weight,bias}
                name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[parts[3]]
                ldm = f"mid.attn_1.{name}.{parts[-1]}"
                conv_linear = name != "norm" and parts[-1] == "weight"
        elif parts[0] == "up_blocks":
            level = n - 1 - int(parts[1])
            if parts[2] == "resnets":
                ldm = f"up.{level}.block.{parts[3]}.{_LDM_RES[parts[4]]}.{parts[5]}"
            elif parts[2] == "upsamplers":
                ldm = f"up.{level}.upsample.conv.{parts[-1]}"
        if ldm is None:
            raise KeyError(f"no LDM name for decoder key {key}")
        out[prefix + key] = (ldm, conv_linear)
    return out


def official_key_map(model) -> Dict[str, Tuple[str, bool]]:
    """Our PrimeDepth (non-SD) key -> (official ``labeller.*`` key, conv-as-linear flag)."""
    out: Dict[str, Tuple[str, bool]] = {}
    for key in model.own_state_dict().keys():
        parts = key.split(".")
        off = None
        if parts[0] == "fusions":
            name = {"features": "convs_features", "attention": "convs_attentions", "merge": "convs_merge"}[parts[2]]
            off = f"labeller.{name}.{parts[1]}.{parts[3]}"
        elif parts[0] == "refiner" and parts[1] == "layers":
            i, sub, rest = parts[2], parts[3], ".".join(parts[4:])
            has_attn = model.refiner.layers[int(i)].attention is not None
            idx = {"resnet": 0, "attention": 1, "upsample": 2 if has_attn else 1}[sub]
            off = f"labeller.refiner.output_blocks.{i}.{idx}.{rest}"
        elif parts[0] == "refiner" and parts[1] == "out":
            off = "labeller." + key
        elif parts[0] in ("depth_head", "seg_head"):
            head = getattr(model, parts[0])
            ldm, conv_linear = ldm_decoder_map(head)[".".join(parts[1:])]
            name = "depth_predictor" if parts[0] == "depth_head" else "label_predictor"
            out[key] = (f"labeller.{name}.{ldm}", conv_linear)
            continue
        if off is None:
            raise KeyError(f"{key} has no counterpart in the official checkpoint (block_conv / latent_head "
                           f"exist only in ablations)")
        out[key] = (off, False)
    return out


# ---------------------------------------------------------------------------------------------- SD parts
def _sd_configs(sd_config: str):
    """(unet config, vae config, text encoder config, tokenizer, scheduler) from a diffusers SD folder or hub id."""
    import json

    from ...hub import resolve_checkpoint

    root = resolve_checkpoint(sd_config, allow_patterns=["model_index.json", "*/*.json", "*/*.txt"])
    try:
        unet_cfg = json.loads((root / "unet" / "config.json").read_text())
        vae_cfg = json.loads((root / "vae" / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{sd_config} is not a diffusers Stable Diffusion folder ({err})") from None
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTokenizer

    try:
        text_cfg = CLIPTextConfig.from_pretrained(str(root / "text_encoder"))
        tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{sd_config} lacks a text_encoder config or tokenizer ({str(err).splitlines()[0]})") from None
    try:
        scheduler = DDPMScheduler.from_pretrained(str(root), subfolder="scheduler")
    except (OSError, ValueError):
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False)
    return unet_cfg, vae_cfg, text_cfg, tokenizer, scheduler


def _load_into(module: torch.nn.Module, state: Dict[str, torch.Tensor], what: str, missing: List[str],
               unmapped: List[str]) -> None:
    own = module.state_dict().keys()
    result = module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False, assign=True)
    missing += [f"{what}.{k}" for k in result.missing_keys]
    unmapped += [f"{what}: converted key {k} has no parameter" for k in state if k not in own]


def build_sd_from_ldm(state: Dict[str, torch.Tensor], sd_config: str, missing: List[str], unmapped: List[str]):
    """A :class:`StableDiffusion` whose weights come from the LDM-named keys of ``state``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextModel

    from ...backbone import StableDiffusion

    unet_cfg, vae_cfg, text_cfg, tokenizer, scheduler = _sd_configs(sd_config)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text = CLIPTextModel(text_cfg)
    _load_into(unet, sfu.convert_ldm_unet_checkpoint(state, unet.config), "unet", missing, unmapped)
    _load_into(vae, sfu.convert_ldm_vae_checkpoint(state, vae.config), "vae", missing, unmapped)
    text_state = sfu.convert_open_clip_checkpoint(text, state, prefix="cond_stage_model.model.")
    own = text.state_dict().keys()
    # transformers >= 5 dropped the ``text_model.`` level of CLIPTextModel's parameter names
    text_state = {(k if k in own or not k.startswith("text_model.") else k[len("text_model."):]): v
                  for k, v in text_state.items() if not k.endswith("position_ids")}
    _load_into(text, text_state, "text_encoder", missing, unmapped)
    for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        for key, buf in list(m.named_buffers()):
            if buf.is_meta:  # non-persistent buffers (e.g. position ids) are rebuilt on CPU
                if key.endswith("position_ids"):
                    owner = m.get_submodule(key.rsplit(".", 1)[0])
                    owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
                else:
                    missing.append(f"{name}.{key}")
    return StableDiffusion(vae=vae, unet=unet, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                           source=str(sd_config))


# ---------------------------------------------------------------------------------------------- convert
def convert_official(src: str, out: str, sd_config: str = "stabilityai/stable-diffusion-2-1",
                     sd: Optional[str] = None, **options: Any) -> Dict[str, List[str]]:
    """Official PrimeDepth checkpoint ``src`` -> diffdepth folder ``out``.

    ``sd_config``: diffusers SD 2.1 folder or hub id supplying the component configs and the
    tokenizer (only configs/tokenizer files are read; weights come from ``src``).
    ``sd``: optionally a complete diffusers SD folder whose weights replace the checkpoint's SD part.
    ``options``: PrimeDepth constructor overrides (default: the official options).
    Returns ``{"unmapped": [...], "missing": [...], "ignored": [...]}`` — checkpoint keys nobody
    took, model parameters the checkpoint did not provide, and schedule buffers skipped on purpose.
    """
    state = load_checkpoint_tensors(src)
    missing: List[str] = []
    sd_notes: List[str] = []
    sd_prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
    if sd is not None:
        from ...backbone import StableDiffusion

        sd_model = StableDiffusion.from_pretrained(sd)
    else:
        if not any(k.startswith("model.diffusion_model.") for k in state):
            raise CheckpointError(f"{src} has no SD UNet weights (model.diffusion_model.*); pass sd=DIFFUSERS_FOLDER")
        sd_model = build_sd_from_ldm(state, sd_config, missing, sd_notes)
    opts = {**OFFICIAL_OPTIONS, **options}
    with torch.device("meta"):
        model = PrimeDepth(sd_model, **opts)
    ours = official_key_map(model)
    new_state: Dict[str, torch.Tensor] = {}
    for key, (off, conv_linear) in ours.items():
        if off not in state:
            missing.append(key)
            continue
        value = state[off]
        if conv_linear and value.dim() == 4:
            value = value[:, :, 0, 0]
        new_state[key] = value
    result = model.load_state_dict(new_state, strict=False, assign=True)
    missing += [k for k in result.missing_keys if not k.startswith("sd.") and k not in missing]
    if missing:
        raise CheckpointError(f"{src} lacks {len(missing)} weight(s) the model needs, e.g. {missing[:4]} "
                              f"(different options? pass them, e.g. use_segmentation_head=False)")
    taken = {off for off, _ in ours.values()}
    ignored = sorted(k for k in state if IGNORED.match(k))
    unmapped = sorted(k for k in state if k not in taken and not k.startswith(sd_prefixes) and k not in ignored)
    if sd is None:
        unmapped += sd_notes + _unused_sd_keys(state, sd_model, ignored)
    model.save_pretrained(out)
    return {"unmapped": unmapped, "missing": missing, "ignored": ignored}


def _unused_sd_keys(state: Dict[str, torch.Tensor], sd_model, ignored: List[str]) -> List[str]:
    """SD keys in the checkpoint with no counterpart: LDM key count vs converted parameter count per part."""
    notes = []
    for prefix, module, name in (("model.diffusion_model.", sd_model.unet, "unet"),
                                 ("first_stage_model.", sd_model.vae, "vae")):
        n_ckpt = sum(1 for k in state if k.startswith(prefix) and k not in ignored)
        n_model = len(module.state_dict())
        if n_ckpt > n_model:
            notes.append(f"{name}: {n_ckpt - n_model} LDM key(s) beyond the diffusers model's {n_model}")
    return notes


def convert(src: str, out: str, **kwargs: Any) -> Dict[str, List[str]]:
    """Entry point for ``diffdepth convert primedepth-official SRC OUT``."""
    return convert_official(src, out, **kwargs)


def converted_official(official: Path, sd_config: str = "stabilityai/stable-diffusion-2-1", **options: Any) -> Path:
    """Convert an official ``.ckpt`` once into the cache and return the converted folder.

    The cache entry is keyed by the file's name, size and modification time
    (``$DIFFDEPTH_CACHE`` or ``~/.cache/diffdepth``, under ``converted/``) and written
    atomically, so an interrupted conversion is simply redone next time.
    """
    from ...utils import atomic_dir

    st = official.stat()
    root = Path(os.environ.get("DIFFDEPTH_CACHE", Path.home() / ".cache" / "diffdepth"))
    # "v2": conversions made before attn_pool / eps / latent existed are redone (they would load as legacy)
    out = root / "converted" / f"primedepth-v2-{official.stem}-{st.st_size}-{st.st_mtime_ns}"
    if not (out / "diffdepth.json").exists():
        print(f"converting official PrimeDepth checkpoint {official} -> {out} (once)", file=sys.stderr)
        with atomic_dir(out) as tmp:
            report = convert_official(str(official), str(tmp), sd_config=sd_config, **options)
        if report.get("unmapped") or report.get("missing"):
            print(f"  unmapped keys: {len(report.get('unmapped', []))}, missing: {len(report.get('missing', []))} "
                  f"(`diffdepth convert primedepth-official` lists them)", file=sys.stderr)
    return out
