"""Official SeeCoder weights -> our :class:`~.seecoder.SeeCoder`.

Source: ``seecoder-v1-0.safetensors`` (hub repo ``shi-labs/prompt-free-diffusion``,
``pretrained/pfd/seecoder/``; ``seecoder-pa-v1-0`` is the position-aware variant). It is the
``ctx`` part of the Prompt-Free Diffusion model, so keys read
``ctx.image.{imencoder|imdecoder|qtransformer}.…``. Our module uses the reference's
module names, so after stripping the prefix the mapping is by name; the converter

* ignores keys we recompute or never use: ``…attn.relative_position_index`` (a buffer
  recomputed from the window size) and ``imencoder.norm0.*`` (the stride-4 output norm;
  SeeCoder reads strides 8/16/32 only),
* checks every shape against a SeeCoder built with the configuration read off the weights
  (Swin width/depths/heads/window, dim, layer counts, FFN widths, 2-D positions),
* reports unmapped source keys and missing target keys (the DC/SA enhancement modules are
  new in SeeCoder-VPD and are listed under ``new``: they start as the identity).

``convert_seecoder(src, out)`` writes ``out/seecoder.safetensors`` (our key names, no prefix)
and ``out/seecoder.json`` (the SeeCoder constructor arguments it implies). When ``out`` ends
in ``.safetensors`` the weights go to that file (and the JSON next to it). Use it with
``SeeCoderVPD.build(backbone, seecoder_weights=out)``, which also accepts the official file
directly (converted on the fly).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Union

import torch

from ...errors import CheckpointError
from ...utils import atomic_path
from .seecoder import SeeCoder

WEIGHTS = "seecoder.safetensors"
CONFIG = "seecoder.json"
_IGNORED = (re.compile(r"\.relative_position_index$"), re.compile(r"^imencoder\.norm0\."),
            re.compile(r"\.attn_mask$"))


def strip_prefix(state: dict) -> dict:
    """Drop the ``ctx.`` / ``ctx.image.`` (or ``image.``) prefix of Prompt-Free Diffusion keys."""
    out = {}
    for k, v in state.items():
        for p in ("ctx.image.", "ctx.", "image."):
            if k.startswith(p) and k[len(p):].split(".", 1)[0] in ("imencoder", "imdecoder", "qtransformer"):
                k = k[len(p):]
                break
        out[k] = v
    return out


def infer_config(state: dict, num_queries=(4, 144), encoder_heads: int = 8, query_heads: int = 8,
                 gn_groups: int = 32) -> dict:
    """SeeCoder constructor arguments implied by an (unprefixed) official state dict."""
    try:
        embed = state["imencoder.patch_embed.proj.weight"].shape[0]
        depths, heads = [], []
        i = 0
        while f"imencoder.layers.{i}.blocks.0.norm1.weight" in state:
            j = 0
            while f"imencoder.layers.{i}.blocks.{j}.norm1.weight" in state:
                j += 1
            depths.append(j)
            heads.append(state[f"imencoder.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1])
            i += 1
        table = state["imencoder.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
        window = (int(round(math.sqrt(table))) + 1) // 2
        dim = state["imdecoder.level_embed"].shape[1]
        enc = sum(1 for k in state if re.fullmatch(r"imdecoder\.transformer\.layers\.\d+\.norm1\.weight", k))
        qry = sum(1 for k in state if re.fullmatch(r"qtransformer\.transformer_feedforward_layers\.\d+\.norm\.weight", k))
        enc_ff = state["imdecoder.transformer.layers.0.linear1.weight"].shape[0]
        q_ff = state["qtransformer.transformer_feedforward_layers.0.linear1.weight"].shape[0]
        total = state["qtransformer.init_query.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"not a SeeCoder state dict: key {err.args[0]!r} is missing") from None
    nq = list(num_queries)
    if sum(nq) != total:
        nq = [max(total - 144, 0), min(total, 144)] if total > 144 else [0, total]
    return dict(swin_embed_dim=embed, swin_depths=depths, swin_heads=heads, swin_window=window, dim=dim,
                encoder_layers=enc, encoder_heads=encoder_heads, encoder_ff=enc_ff, query_layers=qry,
                query_heads=query_heads, query_ff=q_ff, num_queries=nq,
                fea2d_pos=any(k.startswith("qtransformer.pe_layer.") for k in state), gn_groups=gn_groups)


def map_state(official: dict, target: dict) -> tuple[dict, dict]:
    """Map an official state dict onto ``target`` (our state dict: name -> tensor).

    Returns (mapped state, report with ``unmapped``, ``missing``, ``ignored``, ``new``, ``mismatched``).
    """
    src = strip_prefix(official)
    mapped, unmapped, ignored, mismatched = {}, [], [], []
    for k, v in src.items():
        if any(p.search(k) for p in _IGNORED):
            ignored.append(k)
        elif k not in target:
            unmapped.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            mismatched.append(f"{k}: {tuple(v.shape)} vs ours {tuple(target[k].shape)}")
        else:
            mapped[k] = v
    rest = [k for k in target if k not in mapped]
    new = [k for k in rest if k.startswith("imdecoder.enhance.")]
    missing = [k for k in rest if not k.startswith("imdecoder.enhance.")]
    return mapped, dict(unmapped=sorted(unmapped), missing=sorted(missing), ignored=sorted(ignored),
                        new=sorted(new), mismatched=mismatched)


def _read(src: Union[str, Path]) -> dict:
    path = Path(src).expanduser()
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{src}: no SeeCoder weights there (expected a .safetensors file or a folder with {WEIGHTS})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        return state.get("state_dict", state)
    except Exception as err:  # corrupt / wrong format
        raise CheckpointError(f"cannot read {path} ({type(err).__name__}: {err}) — is it seecoder-v1-0.safetensors?") from None


def convert_seecoder(src: str, out: str, num_queries=(4, 144), encoder_heads: int = 8, query_heads: int = 8,
                     gn_groups: int = 32, strict: bool = True, **_: object) -> dict:
    """Convert the official SeeCoder file ``src`` and write it under ``out`` (see module doc).

    ``strict`` (default): raise CheckpointError when a key is unmapped, missing or mis-shaped.
    Returns the report dict (``unmapped``, ``missing``, ``ignored``, ``new``, ``mismatched``,
    ``config``, ``weights``).
    """
    official = _read(src)
    state = strip_prefix(official)
    cfg = infer_config(state, num_queries, encoder_heads, query_heads, gn_groups)
    with torch.device("meta"):
        target = SeeCoder(**cfg, enhancement="none").state_dict()
    mapped, report = map_state(official, target)
    if strict and (report["unmapped"] or report["missing"] or report["mismatched"]):
        raise CheckpointError(
            f"{src}: {len(report['unmapped'])} unmapped, {len(report['missing'])} missing, "
            f"{len(report['mismatched'])} mis-shaped keys (first: "
            f"{(report['unmapped'] + report['missing'] + report['mismatched'])[:3]}) — pass --opt strict=false to keep going")
    out_path = Path(out).expanduser()
    if out_path.suffix == ".safetensors":
        weights, config = out_path, out_path.with_suffix(".json")
    else:
        out_path.mkdir(parents=True, exist_ok=True)
        weights, config = out_path / WEIGHTS, out_path / CONFIG
    from safetensors.torch import save_file

    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in mapped.items()}, str(tmp))
    with atomic_path(config) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2))
    report.update(config=cfg, weights=str(weights))
    return report


#: the name the shared converter table might use
convert = convert_seecoder


def load_seecoder_weights(seecoder: SeeCoder, src: Union[str, Path], strict: bool = True) -> dict:
    """Load converted (or official, converted on the fly) SeeCoder weights into ``seecoder``.

    Enhancement (DC/SA) parameters are new and keep their identity initialisation. Raises
    CheckpointError when the weights do not fit this SeeCoder's configuration.
    """
    mapped, report = map_state(_read(src), seecoder.state_dict())
    problems = report["unmapped"] + report["missing"] + report["mismatched"]
    if strict and problems:
        raise CheckpointError(f"{src} does not fit this SeeCoder config ({len(problems)} problem keys, first: "
                              f"{problems[:3]}) — check seecoder.* options against seecoder.json")
    seecoder.load_state_dict(mapped, strict=False)
    return report
