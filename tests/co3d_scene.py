"""A synthetic scene with known geometry, written in CO3D v2's on-disk format (for the 3D training tests).

World (= camera 0's PyTorch3D view space: +X left, +Y up, +Z forward): a background plane at Z = 4, the object
- a box whose front face is the plane Z = 3 and a pillar in front of it at Z = 2, beside it - and cameras that
orbit the object. Every pixel is ray cast exactly (float64), so the depth of every surface point and the true
correspondence of every pixel are known. Camera 0 sees only fronto-parallel faces: its depths (3, 2, 4 and, stored
halved with ``scale_adjustment = 2``, 1.5, 1, 2) are exact in float16.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

FLIP = np.diag([-1.0, -1.0, 1.0])
BOXES = {  # name: (min corner, max corner), world units
    "box": (np.array([-0.5, -0.5, 3.0]), np.array([0.5, 0.5, 3.6])),
    "pillar": (np.array([0.62, -1.0, 2.0]), np.array([0.82, 1.0, 2.2])),
}
PLANE_Z = 4.0


def look_at(yaw_deg: float, pitch_deg: float = 0.0, shift: float = 0.0, centre=(0.0, 0.0, 3.3)) -> np.ndarray:
    """(4, 4) world -> camera (OpenCV axes) of a camera orbiting ``centre`` at camera 0's distance (yaw about Y)."""
    c = np.asarray(centre)
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    rot = ry @ rx  # camera-0 axes turned about the centre
    position = c + rot @ (np.zeros(3) - c) + np.array([shift, 0, 0])
    r_cv = FLIP @ rot.T  # world -> OpenCV camera: PyTorch3D view axes, flipped
    m = np.eye(4)
    m[:3, :3] = r_cv
    m[:3, 3] = -r_cv @ position
    return m


def intrinsics(size=(160, 120), f=150.0, centre_offset=(3.0, -2.0)) -> np.ndarray:
    w, h = size
    return np.array([[f, 0, (w - 1) / 2 + centre_offset[0]], [0, f * 1.02, (h - 1) / 2 + centre_offset[1]], [0, 0, 1]])


def ray_cast(k: np.ndarray, m: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space depth (inf: no hit) and surface id (0 none, 1 plane, 2 box, 3 pillar) at pixels ``xy`` (N, 2)."""
    d_cam = np.linalg.solve(k, np.concatenate([xy, np.ones((len(xy), 1))], 1).T).T  # z = 1
    r = m[:3, :3]
    origin = -r.T @ m[:3, 3]
    d = d_cam @ r  # world directions (rows): r.T @ d_cam
    depth = np.full(len(xy), np.inf)
    surface = np.zeros(len(xy), int)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (PLANE_Z - origin[2]) / d[:, 2]
    hit = t > 0
    depth[hit], surface[hit] = t[hit], 1
    for sid, (lo, hi) in enumerate(BOXES.values(), start=2):
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - origin) / d, (hi - origin) / d
        near = np.nanmax(np.minimum(t1, t2), axis=1)
        far = np.nanmin(np.maximum(t1, t2), axis=1)
        hit = (near <= far) & (near > 0) & (near < depth)
        depth[hit], surface[hit] = near[hit], sid
    return depth, surface  # the ray's parameter is the camera-space z (d_cam has z = 1)


def world_point(k: np.ndarray, m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    depth, _ = ray_cast(k, m, xy)
    d_cam = np.linalg.solve(k, np.concatenate([xy, np.ones((len(xy), 1))], 1).T).T * depth[:, None]
    r = m[:3, :3]
    return (d_cam - m[:3, 3]) @ r  # r.T @ (x - t)


def project(k: np.ndarray, m: np.ndarray, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = world @ m[:3, :3].T + m[:3, 3]
    return (cam @ k.T)[:, :2] / cam[:, 2:3], cam[:, 2]


def _texture(world: np.ndarray, surface: np.ndarray, photo: np.ndarray | None) -> np.ndarray:
    """RGB in [0, 1] for surface points: a photo (or stripes) mapped on X/Y, the box faces shifted in colour."""
    x, y = world[:, 0], world[:, 1] + 0.37 * world[:, 2]
    if photo is None:
        rgb = np.stack([0.5 + 0.5 * np.sin(9 * x), 0.5 + 0.5 * np.sin(7 * y + 1), 0.5 + 0.5 * np.sin(5 * (x + y))], 1)
    else:
        h, w = photo.shape[:2]
        u = ((x * 0.35 + 0.5) % 1) * (w - 1)
        v = ((-y * 0.35 + 0.5) % 1) * (h - 1)
        rgb = photo[v.astype(int), u.astype(int)] / 255.0
    rgb = rgb * (0.6 + 0.4 * (surface[:, None] == 1)) + 0.3 * (surface[:, None] == 3)
    rgb[surface == 0] = 0
    return rgb.clip(0, 1)


CAMERAS = [  # (yaw, pitch, lateral shift, intrinsics format)
    (0.0, 0.0, 0.0, "ndc_norm_image_bounds"),
    (-25.0, 4.0, 0.0, "ndc_isotropic"),  # the pillar hides part of the box
    (12.0, -3.0, 0.0, "ndc_norm_image_bounds"),
    (6.0, 0.0, 1.1, "ndc_isotropic"),  # moved sideways: part of the box leaves the view
]


def to_co3d_viewpoint(k: np.ndarray, m: np.ndarray, size: tuple[int, int], fmt: str) -> dict:
    """The CO3D ``viewpoint`` record of a pinhole camera (inverse of ``Co3dCamera.intrinsics`` and
    ``world_to_camera``)."""
    w, h = size
    half = np.array([w / 2, h / 2])
    s = half if fmt == "ndc_norm_image_bounds" else np.array([min(half)] * 2)
    focal = np.array([k[0, 0], k[1, 1]]) / s
    principal = (half - (np.array([k[0, 2], k[1, 2]]) + 0.5)) / s
    r_p3d = m[:3, :3].T @ FLIP  # R with X_view = X_world @ R + T
    t_p3d = FLIP @ m[:3, 3]
    return {
        "R": r_p3d.tolist(),
        "T": t_p3d.tolist(),
        "focal_length": focal.tolist(),
        "principal_point": principal.tolist(),
        "intrinsics_format": fmt,
    }


def write_scene(
    root: Path,
    category: str = "box",
    sequence: str = "seq_0",
    photo: np.ndarray | None = None,
    size=(160, 120),
    cameras=CAMERAS,
    depth_scale: float = 2.0,
    depth_every: int = 1,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Render ``cameras`` and write them as one CO3D sequence; return each frame's ``(K, world_to_camera)``.

    Depth maps and depth masks are written as CO3D's ``store_depth`` does (float16 depths' bits as a 16-bit PNG), at
    every ``depth_every``-th pixel (2: half the image's resolution, as some CO3D sequences store them)."""
    w, h = size
    seq = root / category / sequence
    for sub in ("images", "depths", "depth_masks", "masks"):
        (seq / sub).mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:h, 0:w]
    xy = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    frames, poses = [], []
    for i, (yaw, pitch, shift, fmt) in enumerate(cameras):
        k, m = intrinsics(size), look_at(yaw, pitch, shift)
        depth, surface = ray_cast(k, m, xy)
        world = world_point(k, m, xy)
        rgb = _texture(world, surface, photo).reshape(h, w, 3)
        name = f"frame{i + 1:06d}"
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(seq / "images" / f"{name}.png")
        stored = np.where(np.isfinite(depth), depth / depth_scale, 0).astype(np.float16).reshape(h, w)
        stored = stored[::depth_every, ::depth_every]
        Image.fromarray(np.frombuffer(stored.tobytes(), np.uint16).reshape(stored.shape)).save(
            seq / "depths" / f"{name}.png.geometric.png"
        )
        Image.fromarray(((stored > 0) * 255).astype(np.uint8)).save(seq / "depth_masks" / f"{name}.png")
        fg = (surface >= 2).reshape(h, w)
        Image.fromarray((fg * 255).astype(np.uint8)).save(seq / "masks" / f"{name}.png")
        rel = f"{category}/{sequence}"
        frames.append(
            {
                "sequence_name": sequence,
                "frame_number": i + 1,
                "frame_timestamp": i / 10,
                "image": {"path": f"{rel}/images/{name}.png", "size": [h, w]},
                "depth": {
                    "path": f"{rel}/depths/{name}.png.geometric.png",
                    "scale_adjustment": depth_scale,
                    "mask_path": f"{rel}/depth_masks/{name}.png",
                },
                "mask": {"path": f"{rel}/masks/{name}.png", "mass": float(fg.sum())},
                "viewpoint": to_co3d_viewpoint(k, m, size, fmt),
                "meta": {},
            }
        )
        poses.append((k, m))
    _append_jgz(root / category / "frame_annotations.jgz", frames)
    _append_jgz(
        root / category / "sequence_annotations.jgz",
        [{"sequence_name": sequence, "category": category, "video_length": len(cameras)}],
    )
    return poses


def _append_jgz(path: Path, records: list) -> None:
    old = json.loads(gzip.decompress(path.read_bytes())) if path.exists() else []
    path.write_bytes(gzip.compress(json.dumps(old + records).encode()))
