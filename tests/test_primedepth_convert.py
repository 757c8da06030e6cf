"""Conversion of an official-layout PrimeDepth checkpoint (LDM naming), built here at tiny size.

The checkpoint is written the way the official code names things: SD weights in LDM
naming (``model.diffusion_model.input_blocks...``, ``first_stage_model.encoder.down...``,
``cond_stage_model.model.transformer.resblocks...``) and PrimeDepth's modules under
``labeller.`` (``convs_features.i``, ``refiner.output_blocks.i.k``, ``depth_predictor.up...``).
The SD parts are then read back by diffusers' own single-file converters, so the LDM names
written here are checked against an independent implementation.
"""
import pickle

import pytest
import torch

from diffdepth.errors import CheckpointError
from diffdepth.methods.primedepth import PrimeDepth
from diffdepth.methods.primedepth.convert import convert_official, load_checkpoint_tensors

_RES_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
             "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_RES_VAE = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_ATTN_VAE = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def unet_to_ldm(unet):
    cfg = unet.config
    L = cfg.layers_per_block
    out = {}
    for k, v in unet.state_dict().items():
        p = k.split(".")
        if p[0] == "time_embedding":
            ldm = f"time_embed.{0 if p[1] == 'linear_1' else 2}.{p[2]}"
        elif p[0] == "conv_in":
            ldm = f"input_blocks.0.0.{p[1]}"
        elif p[0] == "conv_norm_out":
            ldm = f"out.0.{p[1]}"
        elif p[0] == "conv_out":
            ldm = f"out.2.{p[1]}"
        elif p[0] == "down_blocks":
            b = int(p[1])
            if p[2] == "downsamplers":
                ldm = f"input_blocks.{(b + 1) * (L + 1)}.0.op.{p[-1]}"
            else:
                idx = 1 + b * (L + 1) + int(p[3])
                ldm = (f"input_blocks.{idx}.0.{_RES_UNET[p[4]]}.{p[5]}" if p[2] == "resnets"
                       else f"input_blocks.{idx}.1.{'.'.join(p[4:])}")
        elif p[0] == "mid_block":
            ldm = (f"middle_block.{0 if p[2] == '0' else 2}.{_RES_UNET[p[3]]}.{p[4]}" if p[1] == "resnets"
                   else f"middle_block.1.{'.'.join(p[3:])}")
        elif p[0] == "up_blocks":
            b = int(p[1])
            has_attn = getattr(unet.up_blocks[b], "attentions", None) is not None
            if p[2] == "upsamplers":
                ldm = f"output_blocks.{b * (L + 1) + L}.{2 if has_attn else 1}.conv.{p[-1]}"
            else:
                idx = b * (L + 1) + int(p[3])
                ldm = (f"output_blocks.{idx}.0.{_RES_UNET[p[4]]}.{p[5]}" if p[2] == "resnets"
                       else f"output_blocks.{idx}.1.{'.'.join(p[4:])}")
        else:
            raise AssertionError(k)
        out["model.diffusion_model." + ldm] = v.clone()
    return out


def decoder_to_ldm(dec, prefix):
    """LDM ``Decoder``/``Encoder`` names for a diffusers Decoder/Encoder state dict."""
    out = {}
    n = len(dec.up_blocks) if hasattr(dec, "up_blocks") else len(dec.down_blocks)
    for k, v in dec.state_dict().items():
        p = k.split(".")
        v = v.clone()
        if p[0] in ("conv_in", "conv_out"):
            ldm = k
        elif p[0] == "conv_norm_out":
            ldm = f"norm_out.{p[1]}"
        elif p[0] == "mid_block" and p[1] == "resnets":
            ldm = f"mid.block_{int(p[2]) + 1}.{_RES_VAE[p[3]]}.{p[4]}"
        elif p[0] == "mid_block":
            name = _ATTN_VAE[p[3]]
            ldm = f"mid.attn_1.{name}.{p[-1]}"
            if name != "norm" and p[-1] == "weight":
                v = v[:, :, None, None]  # LDM AttnBlock uses 1x1 convs
        elif p[0] == "up_blocks":
            level = n - 1 - int(p[1])
            ldm = (f"up.{level}.block.{p[3]}.{_RES_VAE[p[4]]}.{p[5]}" if p[2] == "resnets"
                   else f"up.{level}.upsample.conv.{p[-1]}")
        elif p[0] == "down_blocks":
            ldm = (f"down.{p[1]}.block.{p[3]}.{_RES_VAE[p[4]]}.{p[5]}" if p[2] == "resnets"
                   else f"down.{p[1]}.downsample.conv.{p[-1]}")
        else:
            raise AssertionError(k)
        out[prefix + ldm] = v
    return out


def text_to_openclip(text, prefix="cond_stage_model.model."):
    sd = text.state_dict()
    if "text_model.embeddings.token_embedding.weight" not in sd:  # transformers >= 5 names
        sd = {"text_model." + k: v for k, v in sd.items()}
    out = {prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"]}
    for i in range(text.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for t in ("weight", "bias"):
            out[dst + f"attn.in_proj_{t}"] = torch.cat([sd[src + f"self_attn.{q}_proj.{t}"] for q in "qkv"])
            out[dst + f"attn.out_proj.{t}"] = sd[src + f"self_attn.out_proj.{t}"]
            out[dst + f"ln_1.{t}"] = sd[src + f"layer_norm1.{t}"]
            out[dst + f"ln_2.{t}"] = sd[src + f"layer_norm2.{t}"]
            out[dst + f"mlp.c_fc.{t}"] = sd[src + f"mlp.fc1.{t}"]
            out[dst + f"mlp.c_proj.{t}"] = sd[src + f"mlp.fc2.{t}"]
    return {k: v.clone() for k, v in out.items()}


def labeller_official(model):
    """PrimeDepth modules under the official names (labeller.py of vislearn/PrimeDepth)."""
    out = {}
    for i, f in enumerate(model.fusions):
        for mine, theirs in (("features", "convs_features"), ("attention", "convs_attentions"),
                             ("merge", "convs_merge")):
            conv = getattr(f, mine)
            if conv is not None:
                out[f"labeller.{theirs}.{i}.weight"] = conv.weight
                out[f"labeller.{theirs}.{i}.bias"] = conv.bias
    for i, layer in enumerate(model.refiner.layers):
        blocks = [layer.resnet] + ([layer.attention] if layer.attention is not None else [])
        if layer.upsample is not None:
            blocks.append(layer.upsample)
        for k, block in enumerate(blocks):
            for name, v in block.state_dict().items():
                out[f"labeller.refiner.output_blocks.{i}.{k}.{name}"] = v
    for name, v in model.refiner.out.state_dict().items():
        out[f"labeller.refiner.out.{name}"] = v
    out.update(decoder_to_ldm(model.depth_head, "labeller.depth_predictor."))
    out.update(decoder_to_ldm(model.seg_head, "labeller.label_predictor."))
    return {k: v.detach().clone() for k, v in out.items()}


class HyperParams:  # something non-tensor that PL checkpoints pickle next to the weights
    def __init__(self):
        self.lr = 1e-5


TINY = dict(refiner_ratio=0.5, refiner_out_channels=16, head_channels=(8, 8, 16, 16), head_layers=1,
            head_norm_groups=4, seg_classes=5)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    model = PrimeDepth.make_tiny(seed=4)
    with torch.no_grad():  # no zero-initialised parameters: every weight must arrive
        for p in model.trainable_parameters():
            p.normal_(0, 0.05)
    sd = model.sd
    state = {}
    state.update(unet_to_ldm(sd.unet))
    state.update(decoder_to_ldm(sd.vae.encoder, "first_stage_model.encoder."))
    state.update(decoder_to_ldm(sd.vae.decoder, "first_stage_model.decoder."))
    for name in ("quant_conv", "post_quant_conv"):
        for t in ("weight", "bias"):
            state[f"first_stage_model.{name}.{t}"] = getattr(sd.vae, name).state_dict()[t].clone()
    state.update(text_to_openclip(sd.text_encoder))
    state.update(labeller_official(model))
    state["betas"] = torch.linspace(0.00085, 0.012, 1000)
    state["alphas_cumprod"] = torch.cumprod(1 - state["betas"], 0)
    state["labeller.some_unknown.weight"] = torch.zeros(2)
    ckpt = tmp / "PrimeDepth.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": HyperParams(), "epoch": 3}, ckpt)
    sd.save_pretrained(tmp / "sd-config")
    return model, ckpt, tmp


def test_loader_never_unpickles_code(official):
    _, ckpt, _ = official
    tensors = load_checkpoint_tensors(ckpt)
    assert "labeller.convs_merge.0.weight" in tensors and "hyper_parameters" not in tensors
    evil = ckpt.parent / "evil.ckpt"

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    evil.write_bytes(pickle.dumps({"state_dict": {"x": Boom()}}))
    with pytest.raises(CheckpointError):
        load_checkpoint_tensors(evil)


def test_convert_round_trip(official, tmp_path):
    model, ckpt, tmp = official
    report = convert_official(str(ckpt), str(tmp_path / "converted"), sd_config=str(tmp / "sd-config"), **TINY)
    assert report["missing"] == []
    assert report["unmapped"] == ["labeller.some_unknown.weight"]
    assert "betas" in report["ignored"]
    loaded = PrimeDepth.from_pretrained(tmp_path / "converted")
    ref = model.state_dict()
    got = loaded.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    x = torch.rand(1, 3, 32, 48)
    a = model.predict(x, seed=1, with_segmentation=True)
    b = loaded.predict(x, seed=1, with_segmentation=True)
    assert torch.equal(a.depth, b.depth)
    assert torch.equal(a.extras["segmentation"], b.extras["segmentation"])


def test_official_checkpoint_folder_is_converted_once_on_load(official, tmp_path, monkeypatch, capsys):
    """A folder holding the official .ckpt (the hub default) loads: converted once into the cache."""
    model, ckpt, tmp = official
    monkeypatch.setenv("DIFFDEPTH_CACHE", str(tmp_path / "cache"))
    hub_like = tmp_path / "hub"
    hub_like.mkdir()
    (hub_like / ckpt.name).symlink_to(ckpt)
    kw = dict(sd_config=str(tmp / "sd-config"), convert_options=TINY)
    loaded = PrimeDepth.from_pretrained(hub_like, **kw)
    assert "converting official PrimeDepth checkpoint" in capsys.readouterr().err
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(model.predict(x, seed=1).depth, loaded.predict(x, seed=1).depth)
    PrimeDepth.from_pretrained(hub_like, **kw)  # second time: from the cache
    assert "converting" not in capsys.readouterr().err
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1


def test_convert_reports_missing(official, tmp_path):
    _, ckpt, tmp = official
    state = load_checkpoint_tensors(ckpt)
    del state["labeller.convs_merge.3.weight"]
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(bad))
    with pytest.raises(CheckpointError, match="fusions.3.merge.weight"):
        convert_official(str(bad), str(tmp_path / "out"), sd_config=str(tmp / "sd-config"), **TINY)
    assert not (tmp_path / "out").exists()
