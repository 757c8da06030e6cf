"""Tiled inference (diffdepth.tiling): no seams, more detail than the global pass, the CLI flags."""
import numpy as np
import pytest
import torch
from PIL import Image

from diffdepth.cli import main
from diffdepth.errors import InputError
from diffdepth.evaluation.alignment import fit_scale_shift
from diffdepth.model import DepthModel
from diffdepth.pipeline import DepthPipeline
from diffdepth.tiling import axis_weights, tile_starts
from diffdepth.types import DepthPrediction

import _toy_methods

_toy_methods.register()


class NormalisingDepth(DepthModel):
    """Like an affine-invariant diffusion model: depth (here the image's grey level) normalised to
    [0, 1] per input, so every tile comes out with its own scale and shift, plus an error that
    grows towards the input's borders (less context there), ``edge_bias * exp(-distance / 3)``."""

    method = "test-normalising"
    output_kind = "affine_invariant_depth"
    size_multiple = 16
    min_size = 16
    default_processing_res = 0

    def __init__(self, edge_bias: float = 0.1, kind: str = "affine_invariant_depth"):
        super().__init__()
        self.edge_bias = edge_bias
        self.output_kind = kind
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def predict(self, images):
        self.calls.append(tuple(images.shape))
        x = images.mean(1, keepdim=True).double()
        if self.output_kind != "metric_depth":
            lo = x.amin((2, 3), keepdim=True)
            hi = x.amax((2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(1e-6)
        h, w = x.shape[-2:]
        yy = torch.arange(h, dtype=x.dtype)[:, None]
        xx = torch.arange(w, dtype=x.dtype)[None, :]
        dist = torch.minimum(torch.minimum(yy, h - 1 - yy), torch.minimum(xx, w - 1 - xx))
        x = x + self.edge_bias * torch.exp(-dist / 3.0)
        return DepthPrediction(x.float(), self.output_kind)


def scene(h=192, w=256):
    """A smooth slope with three boxes in front (depth discontinuities); the image's grey level is
    an affine function of depth, so the ground truth in the model's space is known exactly."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = 0.3 + 0.4 * xx / w + 0.2 * yy / h + 0.05 * np.sin(xx / 9.0) * np.cos(yy / 7.0)
    edges = np.zeros((h, w), bool)
    for top, left, bh, bw, d in ((20, 30, 60, 50, 0.1), (100, 140, 70, 90, 0.95), (40, 170, 40, 40, 0.05)):
        depth[top:top + bh, left:left + bw] = d
        edges[top:top + bh, left] = edges[top:top + bh, left + bw - 1] = True
        edges[top, left:left + bw] = edges[top + bh - 1, left:left + bw] = True
    grey = depth.astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    near_edge = torch.nn.functional.max_pool2d(torch.from_numpy(edges[None, None].astype(np.float32)), 7, 1, 3)[0, 0]
    return rgb, grey.astype(np.float64), near_edge.numpy() > 0


def abs_error(pred, gt, mask):
    """|pred - gt| after the least-squares scale and shift fitted on ``mask``."""
    s, t = fit_scale_shift(pred, gt, mask)
    return np.abs(s * pred.astype(np.float64) + t - gt)


def shared_zone(h, w, tile, overlap, margin=3):
    """Pixels two or more tiles cover, grown by ``margin`` px: where a seam could show."""
    count = np.zeros((h, w), np.float32)
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            count[y:y + tile, x:x + tile] += 1
    shared = torch.from_numpy((count > 1).astype(np.float32))[None, None]
    return torch.nn.functional.max_pool2d(shared, 2 * margin + 1, 1, margin)[0, 0].numpy() > 0


def test_tiles_cover_evenly_and_weights_sum_to_one():
    for length, tile, overlap in ((256, 64, 16), (200, 64, 16), (1536, 512, 128), (2048, 512, 128), (50, 64, 16)):
        starts = tile_starts(length, tile, overlap)
        t = min(tile, length)
        assert starts[0] == 0 and starts[-1] + t == length
        assert all(a + t - b >= overlap for a, b in zip(starts, starts[1:]))  # at least the overlap shared
        total = np.zeros(length)
        for s, wgt in zip(starts, axis_weights(starts, t)):
            assert (wgt > 0).all()
            total[s:s + t] += wgt
        np.testing.assert_allclose(total, 1.0, atol=1e-12)  # complementary raised cosines
    assert len(tile_starts(2048, 512, 128)) * len(tile_starts(1536, 512, 128)) == 5 * 4


def test_no_seams_and_more_detail_than_the_global_pass():
    rgb, gt, near_edge = scene()
    h, w = gt.shape
    tile, overlap = 64, 16
    model = NormalisingDepth()
    tiled = DepthPipeline(model, processing_res=64, tile=tile, tile_overlap=overlap, batch_size=4)(rgb)
    assert model.calls[0] == (1, 3, 48, 64)  # the global pass at the processing resolution
    n_tiles = len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap))
    assert sum(c[0] for c in model.calls[1:]) == n_tiles and all(c[2:] == (64, 64) for c in model.calls[1:])
    global_only = DepthPipeline(NormalisingDepth(), processing_res=64)(rgb)
    assert tiled.depth.shape == global_only.depth.shape == (h, w)

    # seams: pixels shared by tiles (their borders) against pixels only one tile sees, away from
    # the image's own border (where every pass is biased) and from depth edges
    inner = np.zeros((h, w), bool)
    inner[16:-16, 16:-16] = True
    smooth = inner & ~near_edge
    err_tiled = abs_error(tiled.depth, gt, smooth)
    err_global = abs_error(global_only.depth, gt, smooth)
    shared = shared_zone(h, w, tile, overlap)
    border, interior = smooth & shared, smooth & ~shared
    assert border.sum() > 1000 and interior.sum() > 1000
    assert err_tiled[border].mean() <= err_tiled[interior].mean()
    # and no step: no jump in the error where tiles meet (a hard cut gives ~10x the interior's)
    jump = np.maximum(np.abs(np.diff(err_tiled, axis=0, append=err_tiled[-1:])),
                      np.abs(np.diff(err_tiled, axis=1, append=err_tiled[:, -1:])))
    assert jump[border].max() <= 2 * jump[interior].max()
    # detail: at the depth discontinuities the tiles (native resolution) beat the global pass
    edge_zone = inner & near_edge
    assert err_tiled[edge_zone].mean() < 0.5 * err_global[edge_zone].mean()
    # sharpness: the step across the left edge of the far box (depth 0.1 -> slope) over 2 px
    row = slice(30, 70)
    step_gt = np.abs(gt[row, 29] - gt[row, 31]).mean()
    step = {name: np.abs(p[row, 29] - p[row, 31]).mean() / np.abs(p[row, 10] - p[row, 50]).mean()
            * np.abs(gt[row, 10] - gt[row, 50]).mean() for name, p in (("tiled", tiled.depth), ("global", global_only.depth))}
    assert abs(step["tiled"] - step_gt) < 0.1 * step_gt < step_gt - step["global"]


def test_metric_tiles_are_not_rescaled():
    rgb, gt, _ = scene()
    pred = DepthPipeline(NormalisingDepth(edge_bias=0.0, kind="metric_depth"), processing_res=64, tile=64,
                         tile_overlap=16)(rgb)
    np.testing.assert_allclose(pred.depth, gt, atol=1e-5)  # exact values, blended without any fit


def test_bad_tile_settings_are_refused():
    with pytest.raises(InputError, match="tile size 8"):
        DepthPipeline(NormalisingDepth(), tile=8)
    with pytest.raises(InputError, match="overlap"):
        DepthPipeline(NormalisingDepth(), tile=64, tile_overlap=64)
    with pytest.raises(InputError, match="needs a tile size"):
        DepthPipeline(NormalisingDepth(), tile_overlap=8)


def test_cli_predict_with_tiles(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    _toy_methods.MeanDepth(offset=1.0).save_pretrained(ckpt)
    rgb, _, _ = scene(192, 256)
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(tmp_path / "big.png")
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "big.png"), "--method", "test-mean", "--checkpoint", str(ckpt),
               "--out", str(out), "--save", "npy", "--tile", "64", "--tile-overlap", "16", "--processing-res", "64"])
    assert rc == 0
    depth = np.load(out / "big.npy")
    assert depth.shape == (192, 256)
    # MeanDepth is exact at native resolution: the tiles bring the sharp edges back
    expected = 1 + np.asarray(Image.open(tmp_path / "big.png"), np.float32).mean(2) / 255
    assert np.abs(depth - expected)[4:-4, 4:-4].max() < 0.02
    assert main(["predict", str(tmp_path / "big.png"), "--method", "test-mean", "--checkpoint", str(ckpt),
                 "--out", str(out), "--tile-overlap", "16"]) == 2
    assert "--tile-overlap 16 needs --tile" in capsys.readouterr().err
