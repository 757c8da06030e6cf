"""Rigid motion, projection and view synthesis (geometry.py, DiffSQL/Monodepth2 self-supervision)."""
import math

import pytest
import torch

from diffdepth.geometry import (axis_angle_to_matrix, backproject, pixel_grid, pixels_to_grid, pose_to_matrix,
                                project, skew, warp_to_target)
from diffdepth.losses.photometric import photometric_error


def _K(h, w, f=None):
    f = f or 0.8 * w
    return torch.tensor([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])


def render_plane_scene(K, R, t, h, w):
    """Render a textured slanted plane seen by a camera with world->camera X_c = R X_w + t.

    The plane is  0.15*y + z = 4  in world coordinates (a floor-like slant), textured with smooth
    sinusoids of the world x, y. Returns image [3,H,W] in [0,1] and true planar depth [1,H,W].
    """
    n = torch.tensor([0.0, 0.15, 1.0], dtype=torch.float64)
    d = 4.0
    R = R.double(); t = t.double(); K = K.double()
    rays = torch.linalg.inv(K) @ pixel_grid(h, w, dtype=torch.float64)  # [3,HW], z = 1
    origin = -R.T @ t  # camera centre in world
    dirs = R.T @ rays  # [3,HW] world directions
    lam = (d - n @ origin) / (n @ dirs)  # [HW]; camera depth = lam since rays have z = 1
    X = origin[:, None] + lam[None] * dirs  # [3,HW]
    u, v = X[0], X[1]
    img = torch.stack([0.5 + 0.3 * torch.sin(2.1 * u + 0.7 * v),
                       0.5 + 0.3 * torch.cos(1.3 * u - 1.9 * v),
                       0.5 + 0.2 * torch.sin(1.7 * u) * torch.cos(1.1 * v)], 0)
    return img.reshape(3, h, w).float(), lam.reshape(1, h, w).float()


def test_rodrigues_matches_closed_form_rotation_about_z():
    angle = 0.3
    R = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, angle]]))[0]
    expected = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    assert torch.allclose(R, expected, atol=1e-6)


def test_rodrigues_is_orthonormal_and_matches_matrix_exponential():
    v = torch.tensor([[0.2, -0.4, 0.1], [1e-5, 2e-5, -1e-5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    R = axis_angle_to_matrix(v)
    expm = torch.linalg.matrix_exp(skew(v))
    assert torch.allclose(R, expm, atol=1e-10)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3), atol=1e-10)


def test_pose_inverse_and_gradient_at_identity():
    aa = torch.tensor([[0.1, 0.2, -0.3]])
    t = torch.tensor([[0.5, -0.2, 1.0]])
    T = pose_to_matrix(aa, t)
    Ti = pose_to_matrix(aa, t, invert=True)
    assert torch.allclose(T @ Ti, torch.eye(4)[None], atol=1e-6)
    assert torch.allclose(T[0, :3, 3], t[0])
    zero = torch.zeros(1, 3, requires_grad=True)
    pose_to_matrix(zero, torch.zeros(1, 3))[0, 0, 1].backward()
    # d R01 / d v_z = -1 at the identity
    assert torch.allclose(zero.grad, torch.tensor([[0.0, 0.0, -1.0]]), atol=1e-6)


def test_backproject_project_round_trip_and_grid_convention():
    h, w = 6, 8
    K = _K(h, w)[None]
    depth = torch.rand(1, 1, h, w) + 1.0
    pts = backproject(depth, torch.linalg.inv(K))
    pix, z = project(pts, K)
    assert torch.allclose(pix, pixel_grid(h, w)[:2][None], atol=1e-4)
    assert torch.allclose(z.reshape(1, 1, h, w), depth, atol=1e-5)
    grid = pixels_to_grid(pixel_grid(h, w)[:2][None], h, w)
    assert grid[0, 0, 0].tolist() == [-1.0, -1.0] and grid[0, -1, -1].tolist() == [1.0, 1.0]


def test_identity_pose_with_true_depth_reproduces_target():
    torch.manual_seed(0)
    h, w = 24, 32
    img = torch.rand(2, 3, h, w)
    depth = torch.rand(2, 1, h, w) * 5 + 1
    warped, valid = warp_to_target(img, depth, _K(h, w), torch.eye(4).expand(2, 4, 4))
    assert valid.all()
    assert torch.allclose(warped, img, atol=1e-4)


def test_true_pose_and_depth_give_near_zero_photometric_error_wrong_pose_does_not():
    h, w = 48, 64
    K = _K(h, w)
    target, depth = render_plane_scene(K, torch.eye(3), torch.zeros(3), h, w)
    R_src = axis_angle_to_matrix(torch.tensor([[0.0, 0.03, 0.01]]))[0]
    t_src = torch.tensor([0.08, 0.0, -0.25])  # camera moved forward and sideways
    source, _ = render_plane_scene(K, R_src, t_src, h, w)
    T = torch.eye(4)
    T[:3, :3] = R_src
    T[:3, 3] = t_src  # target camera (= world) -> source camera
    err_static = photometric_error(source[None], target[None]).mean().item()

    warped, valid = warp_to_target(source[None], depth[None], K[None], T[None])
    keep = valid.clone()
    keep[..., :2, :] = False; keep[..., -2:, :] = False; keep[..., :2] = False; keep[..., -2:] = False
    assert keep.float().mean() > 0.5
    err_true = photometric_error(warped, target[None])[keep].mean().item()

    T_wrong = T.clone()
    T_wrong[:3, 3] = torch.tensor([-0.08, 0.05, 0.25])
    warped_w, valid_w = warp_to_target(source[None], depth[None], K[None], T_wrong[None])
    err_wrong = photometric_error(warped_w, target[None])[keep & valid_w].mean().item()
    assert err_true < 0.01, err_true
    assert err_wrong > 5 * err_true and err_static > 5 * err_true, (err_true, err_wrong, err_static)


def test_warp_is_differentiable_in_depth_and_pose():
    h, w = 16, 16
    K = _K(h, w)
    target, depth = render_plane_scene(K, torch.eye(3), torch.zeros(3), h, w)
    aa = torch.zeros(1, 3, requires_grad=True)
    tr = torch.tensor([[0.05, 0.0, 0.0]], requires_grad=True)
    d = depth[None].clone().requires_grad_(True)
    src, _ = render_plane_scene(K, torch.eye(3), torch.tensor([0.1, 0.0, 0.0]), h, w)
    warped, _ = warp_to_target(src[None], d, K, pose_to_matrix(aa, tr))
    photometric_error(warped, target[None]).mean().backward()
    assert tr.grad.abs().sum() > 0 and aa.grad.abs().sum() > 0 and d.grad.abs().sum() > 0


def test_warp_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        warp_to_target(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 9), _K(8, 8), torch.eye(4)[None])
