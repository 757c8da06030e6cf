"""Marigold (affine-invariant depth) and MetricGold (metric depth) — one latent depth denoiser.

Ke et al. 2024, "Repurposing Diffusion-Based Image Generators for Monocular Depth
Estimation" (Marigold), Sec. 3; MetricGold (arXiv 2411.10886): the same model with a
log-depth normaliser so the decoded depth is in metres. Garcia et al. 2024 ("Fine-tuning
image-conditional diffusion models is easier than you think"): trailing timestep spacing
(one step from t = 999) and end-to-end single-step fine-tuning.

Model (Marigold Sec. 3.1, Fig. 2): the SD VAE encodes the image (z_x) and the normalised
depth repeated to 3 channels (z_d); the UNet sees concat(z_x, z_d^t) -> 8 channels (conv_in
widened from 4 by duplicating its input weights and halving them, so the pretrained UNet
responds to the widened input exactly as before when both halves agree) and the empty-prompt
CLIP embedding. Inference: DDIM (η = 0) from Gaussian noise, optional ensembling.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

from ...backbone import StableDiffusion
from ...errors import CheckpointError, ConfigError, InputError
from ...model import CONFIG_NAME, DepthModel, read_json, register_to_config
from ...types import DepthPrediction
from .ensemble import REDUCTIONS, ensemble_affine, ensemble_log
from .normalizers import AffineNormalizer, LogNormalizer

if TYPE_CHECKING:
    from diffusers import DDIMScheduler

#: diffusers DDIM config keys we keep from a checkpoint's scheduler (everything the sampler reads)
SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "prediction_type", "rescale_betas_zero_snr", "set_alpha_to_one", "steps_offset",
                  "clip_sample", "clip_sample_range", "timestep_spacing")
#: DDIM timestep spacings (Lin et al. 2024, Table 2) and UNet parameterisations
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def expand_conv_in(unet: nn.Module, copies: int = 2) -> nn.Module:
    """Widen ``unet.conv_in`` from C to ``copies``·C input channels (Marigold Sec. 3.2).

    The kernel is repeated along the input axis and divided by ``copies``, so feeding the same
    latent to every copy gives exactly the old response. Updates ``unet.config.in_channels``.
    """
    old = unet.conv_in
    new = nn.Conv2d(old.in_channels * copies, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight.repeat(1, copies, 1, 1) / copies)  # [O, copies*C, k, k]
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels * copies)
    return unet


#: named sets of inference defaults (``preset=`` / ``--preset``). Explicit options override them; they
#: override the checkpoint's defaults. Papers: Marigold v1.0 (Ke et al. 2024, Sec. 4.1) and MetricGold
#: (arXiv 2411.10886, "Method Summary"): DDIM 50 steps, 10 seeds aggregated; the spacing is the SD 2
#: scheduler's "leading" (t = 981 ... 1 with steps_offset 1), which neither paper states. Garcia et al.
#: 2024 / Marigold v1-1: one "trailing" step (t = 999).
PAPER = {"steps": 50, "timestep_spacing": "leading", "ensemble_size": 10}
FAST = {"steps": 1, "timestep_spacing": "trailing", "ensemble_size": 1}


#: what a scheduler config that omits these keys means here (Stable Diffusion 2's values)
SCHEDULER_DEFAULTS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          prediction_type="v_prediction", set_alpha_to_one=False, timestep_spacing="leading")


def _scheduler_dict(scheduler: Any) -> dict:
    cfg = {**SCHEDULER_DEFAULTS, **dict(getattr(scheduler, "config", scheduler) or {})}
    return {k: cfg[k] for k in SCHEDULER_KEYS if k in cfg}


class LatentDepthModel(DepthModel):
    """Shared implementation; subclasses fix the normaliser (and hence the output kind)."""

    normalizer_name: str = "affine"
    predict_options = {
        "steps": {"type": int, "help": "denoising steps", "min": 1},
        "ensemble_size": {"type": int, "help": "ensemble members", "min": 1},
        "seed": {"type": int, "help": "random seed for noise"},
        "reduction": {"type": str, "help": "ensemble reduction", "choices": ("median", "mean")},
        "timestep_spacing": {"type": str, "help": "DDIM spacing", "choices": ("leading", "trailing")},
        "preset": {"type": str, "metavar": "NAME", "help": "named inference defaults, e.g. paper or fast (listed by "
                                                           "`diffdepth info`); the other flags override it"},
        "batch_size": {"type": int}, "video_blend": {"type": float}}
    #: preset name -> (description, options); subclasses list theirs (shown by ``diffdepth info``)
    presets: dict[str, tuple[str, dict]] = {}
    #: size inputs and outputs as diffusers' MarigoldDepthPipeline does (floored sides, no
    #: antialiasing of the output); the padding is done in :meth:`run`
    resize_convention = "marigold"
    #: the UNet runs whole, without hooks (``apply_fast_paths(compile=True)`` compiles it in one piece)
    taps_unet = False
    config_ignore = ("sd",)
    #: training states saved before the backbone moved into ``self.sd`` (issue 12)
    legacy_state_prefixes = {f"{part}.": f"sd.{part}." for part in ("unet", "vae", "text_encoder")}

    @classmethod
    def can_load(cls, path: Union[str, Path]) -> bool:
        """Our folder of either normaliser (fine-tuning may switch it) or a diffusers Marigold pipeline folder."""
        marker, index = (read_json(Path(path) / name) or {} for name in (CONFIG_NAME, "model_index.json"))
        return (marker.get("method") in ("marigold", "metricgold")
                or str(index.get("_class_name", "")).startswith("Marigold"))

    @register_to_config
    def __init__(self, sd: StableDiffusion, *, default_denoising_steps: int = 4,
                 default_processing_resolution: int = 768, timestep_spacing: Optional[str] = None,
                 init_noise: str = "gaussian", video_blend: float = 0.1, default_ensemble_size: int = 1,
                 default_reduction: str = "median", batch_size: int = 0,
                 d_min: float = 0.1, d_max: float = 100.0, q_low: float = 0.02, q_high: float = 0.98,
                 **unknown: Any):
        super().__init__()
        unknown.pop("normalizer", None)  # fixed by the class; kept in saved configs for readers
        if unknown:
            raise ConfigError(f"unknown {self.method} option(s) {sorted(unknown)}")
        lat = int(sd.vae.config.latent_channels)
        if sd.unet.config.in_channels != 2 * lat or sd.unet.config.out_channels != lat:
            raise CheckpointError(
                f"the UNet takes {sd.unet.config.in_channels} channels and returns {sd.unet.config.out_channels}; a "
                f"{self.method} UNet needs {2 * lat} in (image latent ‖ depth latent) and {lat} out — start from "
                f"`build` (it widens conv_in) or load a Marigold checkpoint")
        if init_noise not in ("gaussian", "zeros"):
            raise ConfigError(f"init_noise must be 'gaussian' or 'zeros', got {init_noise!r}")
        if default_reduction not in REDUCTIONS:
            raise ConfigError(f"default_reduction must be median or mean, got {default_reduction!r}")
        if not 0.0 <= float(video_blend) <= 1.0:
            raise ConfigError(f"video_blend must be in [0, 1], got {video_blend}")
        from diffusers import DDIMScheduler

        sched = _scheduler_dict(sd.scheduler)
        for key, value, allowed in (("timestep_spacing", timestep_spacing or sched["timestep_spacing"], SPACINGS),
                                    ("timestep_spacing", sched["timestep_spacing"], SPACINGS),
                                    ("prediction_type", sched["prediction_type"], PREDICTION_TYPES)):
            if value not in allowed:
                raise ConfigError(f"{key} must be one of {allowed}, got {value!r}")
        try:
            sd.scheduler = DDIMScheduler.from_config(sched)  # η = 0 sampling; its betas also serve training
        except (NotImplementedError, ValueError) as err:
            raise ConfigError(f"scheduler config: {err}") from None
        # Marigold trains the UNet only; the VAE and the text encoder stay frozen
        self.sd = sd.freeze()
        sd.unet.requires_grad_(True)
        sd.pad_empty_prompt = False  # BOS + EOS only, as diffusers' MarigoldDepthPipeline encodes ""
        if self.normalizer_name == "log":
            self.normalizer = LogNormalizer(d_min, d_max)
        else:
            self.normalizer = AffineNormalizer(q_low, q_high)
        cfg = self.config  # the arguments (register_to_config) with JSON types fixed and one normaliser's pair
        for key in ("q_low", "q_high", "d_min", "d_max"):
            del cfg[key]
        cfg.update(self.normalizer.config(), video_blend=float(video_blend))
        for key in ("default_denoising_steps", "default_processing_resolution", "default_ensemble_size", "batch_size"):
            cfg[key] = int(cfg[key])
        self.latent_factor = sd.latent_factor
        # The model pads its own input (bottom/right, replicate, to the VAE factor) and crops the
        # members before ensembling, as diffusers' MarigoldDepthPipeline does; so the pipeline pads
        # nothing. The UNet takes latents of any size (diffusers forwards the upsample sizes).
        self.size_multiple = 1
        self.min_size = sd.size_multiple
        self.default_processing_res = int(default_processing_resolution)

    # ------------------------------------------------------------------ small helpers
    @property
    def device(self) -> torch.device:
        return self.sd.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sd.dtype

    def encode_depth(self, depth: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B,1,H,W] depth -> normalise -> repeat to 3 channels -> scaled latent [B,4,h,w]."""
        x = self.normalizer.encode(depth, valid).to(device=self.device, dtype=self.sd.vae.dtype)
        return self.sd.vae.encode(x.repeat(1, 3, 1, 1)).latent_dist.mode() * self.sd.scaling_factor

    def decode_normalized(self, z: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """Scaled latent [B,4,h,w] -> VAE decode -> mean of the 3 channels [B,1,H,W] (clipped to [-1,1])."""
        y = self.sd.decode_latent(z).mean(dim=1, keepdim=True)  # [B,1,H,W]
        return torch.clip(y, -1.0, 1.0) if clip else y

    def decode_depth(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> depth: [0,1] affine-invariant (marigold) or metres (metricgold)."""
        return self.normalizer.decode(self.decode_normalized(z))

    def ddim(self, steps: int, spacing: Optional[str] = None) -> DDIMScheduler:
        """diffusers' DDIMScheduler of this checkpoint with ``steps`` timesteps in ``spacing`` (Lin et
        al. 2024, Table 2): one "leading" step queries t = 1 (Garcia et al. 2024: why one-step
        Marigold fails), one "trailing" step t = 999."""
        config = self.sd.scheduler.config
        sched = type(self.sd.scheduler).from_config(config, timestep_spacing=spacing or self.config["timestep_spacing"]
                                          or config.timestep_spacing)
        sched.set_timesteps(int(steps))
        return sched

    def denoise(self, image_latent: torch.Tensor, latent: torch.Tensor, scheduler: DDIMScheduler,
                context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """DDIM (η = 0, Song et al. 2021, Eq. 12) over ``scheduler.timesteps``: depth latent [B,4,h,w]
        conditioned on the image latent."""
        ctx = self.sd.encode_prompt(None, batch_size=latent.shape[0]) if context is None else context
        for t in scheduler.timesteps:
            x = torch.cat([image_latent, latent], dim=1)  # [B,8,h,w]
            out = self.sd.unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]  # [B,4,h,w]
            latent = scheduler.step(out, t, latent).prev_sample
        return latent

    # ------------------------------------------------------------------ inference
    def _resolve(self, options: dict) -> dict:
        cfg, sched = self.config, self.sd.scheduler.config
        preset = options.get("preset")
        if preset is not None:
            if preset not in self.presets:
                raise InputError(f"unknown --preset {preset!r} for {self.method}; use one of "
                                 f"{', '.join(self.presets) or 'none'}")
            given = {k: v for k, v in options.items() if v is not None}
            options = {**self.presets[preset][1], **given}
        steps = options.get("steps") or cfg["default_denoising_steps"]
        ensemble = options.get("ensemble_size") or cfg["default_ensemble_size"]
        spacing = options.get("timestep_spacing") or cfg["timestep_spacing"] or sched.timestep_spacing
        reduction = options.get("reduction") or cfg["default_reduction"]
        batch = options.get("batch_size") or cfg["batch_size"]
        blend = options.get("video_blend")
        blend = cfg["video_blend"] if blend is None else float(blend)
        if not 1 <= int(steps) <= sched.num_train_timesteps:
            raise InputError(f"--steps must be between 1 and {sched.num_train_timesteps}, got {steps}")
        if int(ensemble) < 1:
            raise InputError(f"--ensemble-size must be >= 1, got {ensemble}")
        if spacing not in SPACINGS:
            raise InputError(f"--timestep-spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
        if reduction not in REDUCTIONS:
            raise InputError(f"--reduction must be median or mean, got {reduction!r}")
        if not 0.0 <= blend <= 1.0:
            raise InputError(f"video_blend must be in [0, 1], got {blend}")
        return {"steps": int(steps), "ensemble_size": int(ensemble), "timestep_spacing": spacing,
                "reduction": reduction, "batch_size": int(batch), "seed": options.get("seed"),
                "video_blend": blend, "preset": preset}

    def latent_shape(self, n: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Depth latents for n members of an H×W image: [n, 4, ⌈H/f⌉, ⌈W/f⌉] (f = ``latent_factor``)."""
        f = self.latent_factor
        return n, int(self.sd.vae.config.latent_channels), -(-int(height) // f), -(-int(width) // f)

    def initial_latents(self, shape, seed: Optional[int] = None,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Initial depth latents: one ``torch.randn`` draw of the whole [N·E,4,h,w] block on the CPU
        (a seeded generator, or the global RNG) — the same draw diffusers' Marigold pipeline makes
        with ``generator`` — or zeros when the checkpoint says ``init_noise: zeros`` (end-to-end models)."""
        if self.config["init_noise"] == "zeros":
            return torch.zeros(shape, device=self.device, dtype=self.dtype)
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(int(seed))
        gen_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(shape, generator=generator, device=gen_device, dtype=self.dtype)
        return z.to(self.device)

    @torch.no_grad()
    def run(self, images: torch.Tensor, steps: Optional[int] = None, ensemble_size: int = 1,
            timestep_spacing: Optional[str] = None, reduction: str = "median", batch_size: int = 0,
            seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
            latents: Optional[torch.Tensor] = None, return_latents: bool = False):
        """The whole inference: encode, E seeded DDIM runs per image, decode, ensemble.

        ``images`` [N,3,H,W] in [0,1], any size: replicate-padded at the bottom and right to
        multiples of ``latent_factor`` (diffusers' ``MarigoldImageProcessor.pad_image``), and the
        members are cropped back to H×W before ensembling. Members are ordered image-major (image
        0's E members first) and processed ``batch_size`` at a time (0: all). ``latents``
        [N·E,4,h,w] (h, w = ⌈H/f⌉, ⌈W/f⌉, see :meth:`latent_shape`) replaces the random initial
        latents. Returns a DepthPrediction (and the final latents when ``return_latents``).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must be [B,3,H,W], got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        ph, pw = -H % self.latent_factor, -W % self.latent_factor
        if ph or pw:
            images = torch.nn.functional.pad(images, (0, pw, 0, ph), mode="replicate")
        N, E = images.shape[0], int(ensemble_size)
        steps = int(steps or self.config["default_denoising_steps"])
        scheduler = self.ddim(steps, timestep_spacing)
        bs = int(batch_size) if batch_size else N * E
        lat_shape = self.latent_shape(N * E, H, W)

        image_latent = torch.cat([self.sd.encode_image(images[i:i + bs]) for i in range(0, N, bs)])  # [N,4,h,w]
        image_latent = image_latent.repeat_interleave(E, dim=0)  # [N*E,4,h,w]
        if latents is None:
            latents = self.initial_latents(lat_shape, seed=seed, generator=generator)
        elif tuple(latents.shape) != lat_shape:
            raise InputError(f"latents must have shape {lat_shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=self.device, dtype=self.dtype)
        final = torch.cat([self.denoise(image_latent[i:i + bs], latents[i:i + bs], scheduler)
                           for i in range(0, N * E, bs)])  # [N*E,4,h,w]
        members = torch.cat([self.decode_depth(final[i:i + bs]) for i in range(0, N * E, bs)])  # [N*E,1,H+ph,W+pw]
        members = members[..., :H, :W].float()  # [N*E,1,H,W]: the padding never enters the ensemble

        uncertainty = None
        if E == 1:
            depth = members
        else:
            depths, uncs = [], []
            for i in range(N):
                group = members[i * E:(i + 1) * E]  # [E,1,H,W]
                if self.normalizer_name == "log":
                    d, u = ensemble_log(group, reduction=reduction, with_uncertainty=True)
                else:
                    d, u = ensemble_affine(group, reduction=reduction, with_uncertainty=True)
                depths.append(d)
                uncs.append(u)
            depth, uncertainty = torch.cat(depths), torch.cat(uncs)  # [N,1,H,W]
        pred = DepthPrediction(depth=depth, kind=self.output_kind, uncertainty=uncertainty,
                               extras={"steps": steps, "timesteps": scheduler.timesteps.tolist(), "ensemble_size": E})
        return (pred, final) if return_latents else pred

    def predict(self, images: torch.Tensor, **options: Any) -> DepthPrediction:
        """images [B,3,H,W] in [0,1] -> depth [B,1,H,W] ([0,1] for marigold, metres for metricgold).

        Options: steps, ensemble_size, seed, reduction (median|mean), timestep_spacing
        (leading|trailing|linspace), batch_size (members per UNet call), video_blend (video only),
        preset (a name from ``presets``: defaults for steps/spacing/ensemble_size that the
        other options override).
        """
        self.check_options(options)
        o = self._resolve(options)
        with torch.inference_mode():
            pred = self.run(images, steps=o["steps"], ensemble_size=o["ensemble_size"],
                            timestep_spacing=o["timestep_spacing"], reduction=o["reduction"],
                            batch_size=o["batch_size"], seed=o["seed"])
        pred.extras.update(timestep_spacing=o["timestep_spacing"], preset=o["preset"])
        return pred

    def video_step(self, images: torch.Tensor, state: Any = None, **options: Any):
        """Temporally consistent frames: every frame starts from one shared noise latent ε, blended
        with the previous frame's final depth latent: z_init = (1 − β)·ε + β·z_prev, β =
        ``video_blend`` (default 0.1, as in the diffusers Marigold video recipe). One member per
        frame. ``state`` = {"noise", "latent"}; a change of frame size restarts it.
        """
        self.check_options(options)
        o = self._resolve(options)
        shape = self.latent_shape(images.shape[0], images.shape[-2], images.shape[-1])
        with torch.inference_mode():
            if not state or tuple(state["noise"].shape) != shape:
                state = {"noise": self.initial_latents(shape, seed=o["seed"]), "latent": None}
            init = state["noise"]
            if state["latent"] is not None:
                init = (1.0 - o["video_blend"]) * init + o["video_blend"] * state["latent"]
            pred, final = self.run(images, steps=o["steps"], ensemble_size=1, timestep_spacing=o["timestep_spacing"],
                                   batch_size=o["batch_size"], latents=init, return_latents=True)
        return pred, {"noise": state["noise"], "latent": final}

    # ------------------------------------------------------------------ training
    def make_training_task(self, **cfg: Any):
        from .training import make_task

        return make_task(self, **cfg)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sd(cls, sd: Any, **config: Any) -> "LatentDepthModel":
        """Wrap a (4-channel) StableDiffusion: widen conv_in, DDIM scheduler config, defaults."""
        sched = _scheduler_dict(sd.scheduler)
        prediction_type = config.pop("prediction_type", None)
        if prediction_type:  # e.g. train an SD 1.5 (epsilon) backbone with v-prediction
            sched["prediction_type"] = prediction_type
        sched.update({"set_alpha_to_one": False, "clip_sample": False, "timestep_spacing": "trailing"})
        if sd.unet.config.in_channels == sd.vae.config.latent_channels:
            expand_conv_in(sd.unet)
        sd.scheduler = sched
        return cls(sd, **config)

    @classmethod
    def build(cls, backbone: str = "stabilityai/stable-diffusion-2-1", **config: Any) -> "LatentDepthModel":
        """A new model around a pretrained SD (hub id or folder): conv_in widened, UNet trainable."""
        return cls.from_sd(StableDiffusion.from_pretrained(source=backbone, frozen=False), **config)

    @classmethod
    def make_tiny(cls, seed: int = 0, **overrides: Any) -> "LatentDepthModel":
        from ...backbone import make_tiny_sd

        sd = make_tiny_sd(seed=seed, prediction_type="v_prediction", frozen=False)
        config = {"default_denoising_steps": 1, "default_processing_resolution": 64}
        config.update(overrides)
        return cls.from_sd(sd, **config)

    # ------------------------------------------------------------------ serialisation
    def model_index(self) -> dict:
        """diffusers' MarigoldDepthPipeline ``model_index.json``."""
        from ...backbone.sd import _diffusers_version

        affine = self.normalizer_name == "affine"
        index = {
            "_class_name": "MarigoldDepthPipeline",
            "_diffusers_version": _diffusers_version(),
            "prediction_type": "depth",
            "scale_invariant": affine,
            "shift_invariant": affine,
            "default_denoising_steps": self.config["default_denoising_steps"],
            "default_processing_resolution": self.config["default_processing_resolution"],
            "unet": ["diffusers", type(self.sd.unet).__name__],
            "vae": ["diffusers", type(self.sd.vae).__name__],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", type(self.sd.text_encoder).__name__],
            "tokenizer": ["transformers", type(self.sd.tokenizer).__name__],
        }
        return index

    def save_pretrained(self, path: Union[str, Path]) -> Path:
        """Marigold diffusers layout (unet/ vae/ scheduler/ text_encoder/ tokenizer/ model_index.json)
        plus ``diffdepth.json`` (normaliser, d_min/d_max, inference defaults). Each sub-folder is
        written to a temporary folder and renamed into place."""
        from ...utils import atomic_path

        path = Path(path)
        sched = _scheduler_dict(self.sd.scheduler)
        if self.config["timestep_spacing"]:
            sched["timestep_spacing"] = self.config["timestep_spacing"]
        parts = {n: getattr(self.sd, n) for n in ("vae", "unet", "text_encoder", "tokenizer")}
        missing = [n for n, part in parts.items() if part is None]
        if missing:
            raise CheckpointError(f"cannot save: this model has no {', '.join(missing)}")
        StableDiffusion(**parts, scheduler=type(self.sd.scheduler).from_config(sched), frozen=False).save_pretrained(
            path, model_index=False)
        with atomic_path(path / "model_index.json") as tmp:
            tmp.write_text(json.dumps(self.model_index(), indent=2, sort_keys=True))
        self.write_marker(path, extra={"scheduler": sched})
        return path

    @classmethod
    def from_pretrained(cls, source: Union[str, Path], device: Optional[torch.device] = None,
                        dtype: Optional[torch.dtype] = None, **overrides: Any) -> "LatentDepthModel":
        """Load our folders or Marigold diffusers folders (``prs-eth/marigold-depth-v1-0``, ``-v1-1``)."""
        from ...hub import resolve_checkpoint

        path = resolve_checkpoint(source, allow_patterns=["model_index.json", CONFIG_NAME, "*/*.json",
                                                          "*/*.txt", "*/*.safetensors"])
        sd = StableDiffusion.from_pretrained(path, components=("vae", "unet", "text_encoder", "tokenizer"),
                                             frozen=False)
        sched_file = path / "scheduler" / "scheduler_config.json"
        sd.scheduler = read_json(sched_file)
        if sd.scheduler is None:
            raise CheckpointError(f"cannot read {sched_file}: no such file")
        if sd.scheduler.get("_class_name", "DDIMScheduler") not in ("DDIMScheduler", "DDPMScheduler"):
            raise CheckpointError(f"{sched_file} names {sd.scheduler.get('_class_name')}; only DDIM checkpoints are "
                                  f"supported (use marigold-depth-v1-0 or -v1-1, not the LCM variant)")
        config = _config_from_folder(path, cls)
        config.update(overrides)
        return cls(sd, **config).to(device=device, dtype=dtype).eval()


def _config_from_folder(path: Path, cls) -> dict:
    """Constructor arguments from diffdepth.json, else from Marigold's model_index.json."""
    marker = read_json(path / CONFIG_NAME)
    if marker is not None:  # the other normaliser's pair (a checkpoint fine-tuned across them) is ignored
        return cls.saved_config(marker)
    index_file = path / "model_index.json"
    index = read_json(index_file)
    if index is None:
        raise CheckpointError(f"{path} has neither {CONFIG_NAME} nor model_index.json")
    name = index.get("_class_name", "")
    if name != "MarigoldDepthPipeline":
        raise CheckpointError(f"{index_file} describes {name or 'an unknown pipeline'}, not MarigoldDepthPipeline")
    if index.get("prediction_type", "depth") != "depth":
        raise CheckpointError(f"{path} predicts {index.get('prediction_type')!r}; only depth checkpoints are supported")
    config = {"default_denoising_steps": int(index.get("default_denoising_steps") or 10),
              "default_processing_resolution": int(index.get("default_processing_resolution") or 768)}
    return config
