"""A coloured point cloud as binary glTF (``.glb``), the format ``gr.Model3D`` shows as points.

The points are the PLY export's (same :func:`ply_depth`, intrinsics and back-projection); only the
container differs. glTF's axes are +Y up and the camera looking down -Z, so OpenCV's ``(x, y, z)``
becomes ``(x, -y, -z)``. Large clouds are thinned by a regular pixel stride for the browser.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..geometry import depth_to_points
from ..io.export import _rgb_uint8_like, ply_depth
from ..utils import atomic_path

MAX_POINTS = 250_000


def save_glb(path: Union[str, Path], depth: Any, rgb: Any, K: np.ndarray, kind: str,
             max_points: int = MAX_POINTS) -> Path:
    d, _ = ply_depth(depth, kind)
    h, w = d.shape
    stride = max(1, int(np.ceil(np.sqrt(h * w / max_points))))
    keep = np.zeros(d.shape, dtype=bool)
    keep[::stride, ::stride] = True
    keep &= np.isfinite(d) & (d > 0)
    pts = depth_to_points(d, np.asarray(K, dtype=np.float64), mask=keep).astype(np.float32)  # [N,3]
    pts[:, 1:] *= -1.0
    cols = np.full((len(pts), 4), 255, dtype=np.uint8)
    cols[:, :3] = _rgb_uint8_like(rgb, d.shape)[keep]
    n = len(pts)
    binary = pts.tobytes() + cols.tobytes()  # 12n + 4n bytes, both 4-aligned
    lo = pts.min(axis=0).tolist() if n else [0.0] * 3
    hi = pts.max(axis=0).tolist() if n else [0.0] * 3
    gltf = {
        "asset": {"version": "2.0", "generator": "diffdepth demo"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "mode": 0}]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 12 * n, "target": 34962},
                        {"buffer": 0, "byteOffset": 12 * n, "byteLength": 4 * n, "target": 34962}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3", "min": lo, "max": hi},
                      {"bufferView": 1, "componentType": 5121, "normalized": True, "count": n, "type": "VEC4"}],
    }
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<4sII", b"glTF", 2, total))
            f.write(struct.pack("<I4s", len(js), b"JSON") + js)
            f.write(struct.pack("<I4s", len(binary), b"BIN\0") + binary)
    return path
