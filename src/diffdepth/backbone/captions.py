"""Captioners: images -> text prompts for the backbone's prompt encoding (PrimeDepth's BLIP-2 captions).

A captioner is any callable ``images -> list[str]``; ``images`` is a list of PIL images, HWC
uint8 arrays or ``[3,H,W]`` float tensors in [0,1], or one ``[B,3,H,W]`` tensor.

:class:`Blip2Captioner` is the official PrimeDepth choice (vislearn/PrimeDepth
``scripts/utils.py``): ``Salesforce/blip2-opt-2.7b`` through ``transformers``, fp16 on CUDA,
the processor's default preprocessing, ``generate()`` with the model's generation defaults,
``batch_decode(skip_special_tokens=True)`` and ``strip()``; the official code captions the
image at its original size, before resizing (``DepthPipeline`` does the same).

Datasets never run a captioner: :func:`diffdepth.data.pseudo.prepare_pseudo_labels` writes
``captions/<name>.txt`` once and readers read them.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch

from ..errors import ConfigError, InputError

#: the captioner of the official PrimeDepth code
BLIP2_DEFAULT = "Salesforce/blip2-opt-2.7b"

Captioner = Callable[[Any], List[str]]


def to_pil_list(images: Any) -> list:
    """Any supported image batch -> list of RGB PIL images."""
    from PIL import Image

    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)):
        images = [images]
    out = []
    for im in images:
        if isinstance(im, Image.Image):
            out.append(im.convert("RGB"))
            continue
        if isinstance(im, torch.Tensor):
            im = im.detach().float().cpu().numpy()
            if im.ndim == 3 and im.shape[0] in (1, 3):
                im = im.transpose(1, 2, 0)
        arr = np.asarray(im)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, -1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
            raise InputError(f"captioner: expected HWC/CHW images, got shape {arr.shape}")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, -1)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        out.append(Image.fromarray(np.ascontiguousarray(arr), "RGB"))
    return out


class Blip2Captioner:
    """BLIP-2 captions through ``transformers`` (``Blip2Processor`` + ``Blip2ForConditionalGeneration``).

    Args:
        model: hub id or local folder (default ``Salesforce/blip2-opt-2.7b``, as the official code).
        device: ``auto`` | ``cpu`` | ``cuda`` ...; dtype: default fp16 on CUDA (official), fp32 otherwise.
        batch_size: images per ``generate`` call. generate: extra ``generate()`` arguments
            (default none: the model's generation config, as the official code).
    """

    def __init__(self, model: Union[str, os.PathLike] = BLIP2_DEFAULT, device: Union[str, torch.device] = "auto",
                 dtype: Optional[Union[str, torch.dtype]] = None, batch_size: int = 8,
                 generate: Optional[Dict[str, Any]] = None):
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        from ..utils import parse_device, parse_dtype

        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype) or (torch.float16 if self.device.type == "cuda" else torch.float32)
        try:
            self.processor = Blip2Processor.from_pretrained(str(model))
            self.model = Blip2ForConditionalGeneration.from_pretrained(str(model), torch_dtype=self.dtype)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load the BLIP-2 captioner {model} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); offline, download it once and "
                              f"pass its local folder") from None
        self.model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.generate_kwargs = dict(generate or {})
        self.source = str(model)

    @torch.inference_mode()
    def __call__(self, images: Any) -> List[str]:
        pil = to_pil_list(images)
        out: List[str] = []
        for i in range(0, len(pil), self.batch_size):
            inputs = self.processor(images=pil[i:i + self.batch_size], return_tensors="pt").to(self.device, self.dtype)
            ids = self.model.generate(**inputs, **self.generate_kwargs)
            out.extend(t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        return out


def load_captioner(spec: Any, device: Union[str, torch.device] = "auto") -> Captioner:
    """A captioner from a spec: ``auto``/``blip2`` (official BLIP-2), a BLIP-2 folder or hub id,
    ``{"blip2": MODEL, "batch_size": .., "generate": {..}}``, ``"module:function"`` or a callable."""
    if spec is None:
        raise ConfigError("no captioner given")
    if callable(spec) and not isinstance(spec, dict):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        model = spec.pop("blip2", BLIP2_DEFAULT)
        return Blip2Captioner(model, device=spec.pop("device", device), **spec)
    spec = str(spec)
    if spec in ("auto", "blip2"):
        return Blip2Captioner(BLIP2_DEFAULT, device=device)
    if ":" in spec and not os.path.exists(spec):
        from ..methods.primedepth.task import _load_callable

        return _load_callable(spec)
    return Blip2Captioner(spec, device=device)


def make_tiny_blip2(path: Union[str, os.PathLike], seed: int = 0, image_size: int = 32) -> Path:
    """Save a randomly initialised tiny BLIP-2 (ViT, Q-Former, OPT of width 32) + processor to ``path``.

    Real ``transformers`` classes and on-disk format, so :class:`Blip2Captioner` loads it like
    ``Salesforce/blip2-opt-2.7b``; the byte-level tokenizer has no merges (one token per byte).
    """
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig,
                              Blip2VisionConfig, BlipImageProcessor, GPT2Tokenizer, OPTConfig)

    from .tiny import _byte_alphabet

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
        for ch in _byte_alphabet():
            vocab.setdefault(ch, len(vocab))
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tok = GPT2Tokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), bos_token="</s>",
                            eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    n_query = 4
    image_proc = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = Blip2Processor(image_processor=image_proc, tokenizer=tok, num_query_tokens=n_query)
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=image_size, patch_size=8)
    qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 encoder_hidden_size=32, vocab_size=64)
    text = OPTConfig(vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=1, ffn_dim=64,
                     num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=32,
                     pad_token_id=0, bos_token_id=1, eos_token_id=1)
    cfg = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                      num_query_tokens=n_query, image_token_index=image_token)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(cfg).eval()
        # special tokens get zero logits (tied rows), so the random model writes text before "</s>"
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            for t in (0, 1, 2, image_token):
                emb[t].zero_()
            emb.mul_(50.0)
    model.generation_config.max_new_tokens = 8
    model.generation_config.do_sample = False
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
