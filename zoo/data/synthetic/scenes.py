"""Rendered 3D scenes with exact per-pixel depth and surface normals, deterministic by seed.

A scene is a room (floor, walls, optionally a ceiling; without one the sky shows above the walls) holding 2-5
primitives (spheres, boxes turned about the vertical, slanted rectangular panels), seen by a pinhole camera
and lit by a directional light that casts object shadows, plus ambient sky light. Rays are cast with
vectorised numpy.

Frames: the world has x right, y up, z forward; the camera sits at the world origin. Ray casting uses the
OpenCV camera frame (x right, y down, z forward, pixel centres at integer coordinates), so a ray whose
camera-frame direction has z = 1 reaches the surface at parameter t = planar depth. Stored normals use the
Lotus/DSINE/Marigold visual convention (x right, y up, z towards the viewer).

Bit-identical output on every machine: only IEEE-exact operations (+, -, *, /, sqrt, floor, comparisons) touch
the arrays and the random draws are uniform ones; no matmul/BLAS, no transcendental functions
(angles are sampled through tan(angle / 2), which turns rotations into rational functions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Rays start this far off a surface so that shadow rays do not hit the surface they leave.
_SHADOW_OFFSET = 1e-4
_HIT_EPS = 1e-6


@dataclass
class SceneSample:
    """One render: RGB image, planar depth, camera-frame normals, validity mask and intrinsics."""

    image: np.ndarray  # float32 [H, W, 3] in [0, 1]
    depth: np.ndarray  # float32 [H, W] planar depth (camera z) in metres, > 0 where valid, 0 elsewhere
    normals: (
        np.ndarray
    )  # float32 [H, W, 3] unit, camera frame X right, Y up, Z to the viewer; 0 where invalid
    valid: np.ndarray  # bool [H, W]; False on sky pixels
    intrinsics: np.ndarray  # float32 [3, 3]; pixel centres at integer coordinates (OpenCV)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the leading axis of two [3, ...] arrays."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _normalize(v: np.ndarray) -> np.ndarray:
    """Unit vector(s) along v ([3, ...])."""
    return v / np.sqrt(_dot(v, v))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product of two [3, ...] arrays."""
    return np.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _matmul3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 matrix product with a fixed summation order (BLAS may fuse or reorder)."""
    out = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            out[i, j] = a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j]
    return out


def _cos_sin(tan_half: float) -> tuple[float, float]:
    """Cosine and sine of the angle whose half has this tangent (rational, hence exact everywhere)."""
    t2 = tan_half * tan_half
    return (1.0 - t2) / (1.0 + t2), 2.0 * tan_half / (1.0 + t2)


def _rotation(axis: int, tan_half: float) -> np.ndarray:
    """Right-handed rotation matrix [3, 3] about a coordinate axis."""
    c, s = _cos_sin(tan_half)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


@dataclass(frozen=True)
class Material:
    """Albedo of a surface: a base colour, optionally patterned with an accent colour in object coordinates.
    """

    base: np.ndarray  # [3] linear albedo
    accent: np.ndarray  # [3] linear albedo of the pattern
    pattern: str  # "plain" | "checker" | "stripes"
    period: float  # metres per pattern cell, so the pattern shrinks with distance (a depth cue)
    axis: np.ndarray  # [3] unit direction across the stripes
    phase: np.ndarray  # [3] offsets in cells; keep cell borders off the faces of the room and boxes

    def albedo(self, coords: np.ndarray) -> np.ndarray:
        """Albedo [3, M] at object coordinates [3, M]."""
        cells = coords / self.period + self.phase[:, None]
        if self.pattern == "checker":
            q = np.floor(cells)
            weight = np.mod(q[0] + q[1] + q[2], 2.0)
        elif self.pattern == "stripes":
            x = _dot(cells, self.axis[:, None])
            # Triangle wave pushed towards a square wave: crisp stripes without aliasing-prone hard edges.
            weight = np.clip((np.abs(2.0 * (x - np.floor(x)) - 1.0) - 0.5) * 3.0 + 0.5, 0.0, 1.0)
        else:
            weight = np.zeros(coords.shape[1])
        return self.base[:, None] + (self.accent - self.base)[:, None] * weight


@dataclass(frozen=True)
class Sphere:
    """A sphere."""

    center: np.ndarray  # [3] world
    radius: float
    material: Material

    def intersect(self, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Ray parameter [N] of the first hit in front of the origin, inf on a miss; origin/direction
        [3, N|1]."""
        oc = origin - self.center[:, None]
        a = _dot(direction, direction)
        b = _dot(direction, oc)
        disc = b * b - a * (_dot(oc, oc) - self.radius * self.radius)
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        return np.where((disc >= 0.0) & (t > _HIT_EPS), t, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outward normals [3, M] and texture coordinates [3, M] at surface points [3, M]."""
        local = points - self.center[:, None]
        return local / self.radius, local


@dataclass(frozen=True)
class Box:
    """A box resting upright, turned about the vertical axis."""

    center: np.ndarray  # [3] world
    half: np.ndarray  # [3] half sizes along its local axes
    cos: float  # turn about the world y axis
    sin: float
    material: Material

    def _to_local(self, v: np.ndarray) -> np.ndarray:
        """World vectors [3, ...] in box axes."""
        return np.stack([self.cos * v[0] - self.sin * v[2], v[1], self.sin * v[0] + self.cos * v[2]])

    def _to_world(self, v: np.ndarray) -> np.ndarray:
        """Box-axis vectors [3, ...] in world axes."""
        return np.stack([self.cos * v[0] + self.sin * v[2], v[1], -self.sin * v[0] + self.cos * v[2]])

    def intersect(self, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Ray parameter [N] of the first hit in front of the origin, inf on a miss; origin/direction
        [3, N|1]."""
        o = self._to_local(origin - self.center[:, None])
        d = self._to_local(direction)
        half = self.half[:, None]
        with np.errstate(
            divide="ignore", invalid="ignore"
        ):  # Rays parallel to a slab give +-inf (or nan: miss).
            t1, t2 = (-half - o) / d, (half - o) / d
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
        t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
        return np.where((t_near <= t_far) & (t_near > _HIT_EPS), t_near, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outward normals [3, M] and texture coordinates [3, M] at surface points [3, M]."""
        local = self._to_local(points - self.center[:, None])
        # The face a point lies on is the axis where it is relatively farthest out.
        face = np.argmax(np.abs(local) / self.half[:, None], axis=0)
        normal = np.zeros_like(local)
        columns = np.arange(local.shape[1])
        normal[face, columns] = np.sign(local[face, columns])
        return self._to_world(normal), local


@dataclass(frozen=True)
class Panel:
    """A flat rectangle of any orientation; its normal faces the camera (which sees only that side)."""

    center: np.ndarray  # [3] world
    normal: np.ndarray  # [3] unit
    u: np.ndarray  # [3] unit in-plane axes
    v: np.ndarray
    half_u: float
    half_v: float
    material: Material

    def intersect(self, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Ray parameter [N] of the first hit in front of the origin, inf on a miss; origin/direction
        [3, N|1]."""
        n = self.normal[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = _dot(self.center[:, None] - origin, n) / _dot(direction, n)
        local = origin + t * direction - self.center[:, None]
        inside = (np.abs(_dot(local, self.u[:, None])) <= self.half_u) & (
            np.abs(_dot(local, self.v[:, None])) <= self.half_v
        )
        return np.where(inside & (t > _HIT_EPS), t, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normals [3, M] and texture coordinates [3, M] at surface points [3, M]."""
        local = points - self.center[:, None]
        return np.broadcast_to(self.normal[:, None], local.shape), local


@dataclass(frozen=True)
class Room:
    """An axis-aligned box around the camera, seen from inside; open-topped rooms show the sky above the
    walls."""

    low: np.ndarray  # [3] world x, y, z of the left wall, floor and back wall (all < 0)
    high: np.ndarray  # [3] world x, y, z of the right wall, ceiling (or wall top) and front wall (all > 0)
    has_ceiling: bool
    materials: tuple[Material, ...]  # 6 faces: -x, +x, -y (floor), +y (ceiling), -z, +z

    def intersect(self, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ray parameter [N] (inf through the open top) and face index [N] for rays from the world origin."""
        d = direction
        with np.errstate(divide="ignore"):
            t_axes = np.where(d > 0, self.high[:, None] / d, np.where(d < 0, self.low[:, None] / d, np.inf))
        face = np.argmin(t_axes, axis=0)  # [N] axis of the exit face
        t = t_axes[face, np.arange(d.shape[1])]
        face = 2 * face + (d[face, np.arange(d.shape[1])] > 0)
        if not self.has_ceiling:
            # Walls end at the height of the missing ceiling; rays above them see the sky.
            t = np.where((face == 3) | (t * d[1] > self.high[1]), np.inf, t)
        return t, face

    def surface(self, points: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inward normals [3, M] and texture coordinates (world) [3, M] at points [3, M] on the given faces
        [M]."""
        normal = np.zeros_like(points)
        normal[face // 2, np.arange(points.shape[1])] = np.where(face % 2 == 0, 1.0, -1.0)
        return normal, points


Primitive = Sphere | Box | Panel


@dataclass(frozen=True)
class Scene:
    """Everything a render needs: camera, geometry, materials, lighting, sensor noise."""

    rotation: np.ndarray  # [3, 3] OpenCV camera axes to world axes (columns: camera x, y, z in the world)
    focal: float  # focal length in units of the image width (fx = fy = focal * W)
    room: Room
    objects: tuple[Primitive, ...]
    light: np.ndarray  # [3] unit world direction towards the light
    sun: float  # directional light intensity
    ambient: float  # sky light intensity
    sky_horizon: np.ndarray  # [3] sky colour at the horizon
    sky_zenith: np.ndarray  # [3] sky colour straight up
    noise: float  # amplitude of the per-pixel sensor noise
    noise_seed: int


def _random_material(
    rng: np.random.Generator, patterns: tuple[str, ...], low: float, high: float
) -> Material:
    """A material with a random colour in [low, high], a darker or contrasting accent and one of the patterns.
    """
    base = rng.uniform(low, high, 3)
    accent = base * rng.uniform(0.3, 0.7) if rng.uniform() < 0.6 else rng.uniform(0.05, 0.95, 3)
    axis = _normalize(rng.uniform(-1.0, 1.0, 3))
    return Material(
        base=base,
        accent=accent,
        pattern=patterns[rng.integers(len(patterns))],
        period=rng.uniform(0.15, 0.6),
        axis=axis,
        phase=rng.uniform(0.0, 1.0, 3),
    )


def _random_object(
    rng: np.random.Generator, rotation: np.ndarray, tan_half_fov: float, room: Room
) -> Primitive:
    """A primitive somewhere in the view, inside the room and clear of the camera."""
    kind = rng.choice(3, p=[0.35, 0.4, 0.25])
    material = _random_material(rng, ("plain", "checker", "stripes"), 0.1, 0.95)
    for _ in range(50):
        # Aim at a point in the central part of the view at a random depth.
        depth = rng.uniform(1.3, min(5.5, room.high[2] - 0.8))
        ray = np.array([rng.uniform(-0.7, 0.7) * tan_half_fov, rng.uniform(-0.7, 0.7) * tan_half_fov, 1.0])
        center = (rotation[:, 0] * ray[0] + rotation[:, 1] * ray[1] + rotation[:, 2] * ray[2]) * depth
        on_floor = rng.uniform() < 0.7
        if kind == 0:
            radius = rng.uniform(0.25, 0.8)
            extent, drop = radius, radius
        elif kind == 1:
            half = rng.uniform(0.2, 0.7, 3)
            cos, sin = _cos_sin(rng.uniform(-1.0, 1.0))
            extent, drop = float(np.sqrt(_dot(half, half))), half[1]
        else:
            half_u, half_v = rng.uniform(0.3, 0.9, 2)
            normal = _normalize(rng.uniform(-1.0, 1.0, 3))
            extent, drop = float(np.sqrt(half_u * half_u + half_v * half_v)), half_v
            on_floor = False
        # Contact with the floor is a strong depth cue; floating objects keep inside the room.
        center = np.clip(center, room.low + extent, room.high - extent)
        center[1] = room.low[1] + drop if on_floor else center[1]
        if np.sqrt(_dot(center, center)) < extent + 0.4:
            continue
        if kind == 0:
            return Sphere(center, radius, material)
        if kind == 1:
            return Box(center, half, cos, sin, material)
        to_camera = _normalize(-center)
        if abs(_dot(normal, to_camera)) < 0.3:
            continue  # A panel seen edge-on would be a sliver.
        # The camera sees one side of a plane only: turn the normal to it once for all pixels.
        normal = normal if _dot(normal, to_camera) > 0 else -normal
        helper = np.array([0.0, 1.0, 0.0]) if abs(normal[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        u = _normalize(_cross(helper, normal))
        return Panel(center, normal, u, _cross(normal, u), half_u, half_v, material)
    # Tiny rooms may leave no place; a small sphere straight ahead always fits.
    return Sphere(rotation[:, 2] * 1.5, 0.2, material)


def sample_scene(seed: int) -> Scene:
    """The random scene of a seed (independent of the render resolution)."""
    rng = np.random.default_rng(seed)
    # tan(angle / 2) bounds: yaw +-30 deg, pitch 10 deg up to 25 deg down, roll +-6 deg.
    yaw = _rotation(1, rng.uniform(-0.2679491924311227, 0.2679491924311227))
    pitch = _rotation(0, rng.uniform(-0.08748866352592401, 0.22169466264293988))
    roll = _rotation(2, rng.uniform(-0.05240777928304121, 0.05240777928304121))
    opencv_to_world = np.diag([1.0, -1.0, 1.0])  # camera y points down, world y up
    rotation = _matmul3(_matmul3(_matmul3(yaw, pitch), roll), opencv_to_world)
    focal = rng.uniform(0.65, 1.2)  # horizontal field of view of about 45 to 75 degrees

    low = np.array([-rng.uniform(1.5, 4.0), -rng.uniform(1.2, 1.8), -rng.uniform(1.0, 3.0)])
    high = np.array([rng.uniform(1.5, 4.0), rng.uniform(0.8, 1.6), rng.uniform(4.0, 9.0)])
    wall = _random_material(rng, ("plain", "plain", "stripes"), 0.4, 0.95)
    side_wall = _random_material(rng, ("plain", "stripes"), 0.4, 0.95)
    floor = _random_material(rng, ("checker", "stripes", "checker"), 0.1, 0.8)
    ceiling = _random_material(rng, ("plain",), 0.6, 0.95)
    room = Room(low, high, rng.uniform() < 0.75, (side_wall, side_wall, floor, ceiling, wall, wall))

    objects = tuple(_random_object(rng, rotation, 0.5 / focal, room) for _ in range(rng.integers(2, 6)))
    light = _normalize(np.array([rng.uniform(-1.0, 1.0), rng.uniform(0.5, 1.5), rng.uniform(-1.0, 0.3)]))
    return Scene(
        rotation=rotation,
        focal=focal,
        room=room,
        objects=objects,
        light=light,
        sun=rng.uniform(0.55, 0.9),
        ambient=rng.uniform(0.15, 0.35),
        sky_horizon=np.array([0.75, 0.85, 0.95]) * rng.uniform(0.85, 1.05),
        sky_zenith=np.array([0.25, 0.45, 0.85]) * rng.uniform(0.8, 1.1),
        noise=rng.uniform(0.0, 0.02),
        noise_seed=int(rng.integers(2**62)),
    )


def _cast(scene: Scene, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth [N] (inf on sky), world normals [3, N] and linear radiance [3, N] of camera rays [3, N]."""
    t, face = scene.room.intersect(direction)
    hit_id = np.full(t.shape, -1)  # -1: room, k: scene.objects[k]
    origin = np.zeros((3, 1))
    for k, obj in enumerate(scene.objects):
        t_obj = obj.intersect(origin, direction)
        closer = t_obj < t
        t = np.where(closer, t_obj, t)
        hit_id[closer] = k
    valid = np.isfinite(t)
    points = direction * np.where(valid, t, 0.0)  # [3, N]

    normal = np.zeros_like(direction)
    albedo = np.zeros_like(direction)
    room_hit = valid & (hit_id == -1)
    for f, material in enumerate(scene.room.materials):
        mask = room_hit & (face == f)
        n, coords = scene.room.surface(points[:, mask], face[mask])
        normal[:, mask], albedo[:, mask] = n, material.albedo(coords)
    for k, obj in enumerate(scene.objects):
        mask = valid & (hit_id == k)
        n, coords = obj.surface(points[:, mask])
        normal[:, mask], albedo[:, mask] = n, obj.material.albedo(coords)

    # Lambertian sun with object shadows, plus sky light that is brighter on upward-facing surfaces.
    light = scene.light[:, None]
    sun = np.maximum(_dot(normal, light), 0.0) * scene.sun
    lit = np.flatnonzero(sun > 0)
    shadow_origin = points[:, lit] + _SHADOW_OFFSET * normal[:, lit]
    blocked = np.zeros(lit.shape, dtype=bool)
    for obj in scene.objects:
        blocked |= np.isfinite(obj.intersect(shadow_origin, light))
    sun[lit[blocked]] = 0.0
    radiance = albedo * (scene.ambient * (0.75 + 0.25 * normal[1]) + sun)

    up = np.clip(direction[1] / np.sqrt(_dot(direction, direction)), 0.0, 1.0)
    sky = scene.sky_horizon[:, None] + (scene.sky_zenith - scene.sky_horizon)[:, None] * up
    radiance = np.where(valid, radiance, sky)
    return np.where(valid, t, np.inf), normal, radiance


def _camera_rays(scene: Scene, u: np.ndarray, v: np.ndarray, cx: float, cy: float, f: float) -> np.ndarray:
    """World directions [3, len(v) * len(u)] with camera z = 1 through pixel coordinates u (columns), v
    (rows)."""
    a = np.broadcast_to((u - cx) / f, (v.size, u.size)).ravel()
    b = np.broadcast_to(((v - cy) / f)[:, None], (v.size, u.size)).ravel()
    r = scene.rotation
    return np.stack([r[i, 0] * a + r[i, 1] * b + r[i, 2] for i in range(3)])


def render(scene: Scene, height: int = 64, width: int = 64) -> SceneSample:
    """Render a scene: antialiased RGB, and depth/normals exact at the pixel centres."""
    f = scene.focal * width
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    centre_rays = _camera_rays(
        scene, np.arange(width, dtype=float), np.arange(height, dtype=float), cx, cy, f
    )
    # Pixel corners are shared by four pixels: a tent filter of centre + corners antialiases at 2x the ray
    # cost.
    corner_rays = _camera_rays(scene, np.arange(width + 1) - 0.5, np.arange(height + 1) - 0.5, cx, cy, f)
    depth, normal, centre = _cast(scene, centre_rays)
    _, _, corner = _cast(scene, corner_rays)
    centre = np.sqrt(np.clip(centre, 0.0, 1.0)).reshape(3, height, width)  # gamma 2 tone curve
    corner = np.sqrt(np.clip(corner, 0.0, 1.0)).reshape(3, height + 1, width + 1)
    corners = corner[:, :-1, :-1] + corner[:, :-1, 1:] + corner[:, 1:, :-1] + corner[:, 1:, 1:]
    image = (0.5 * centre + 0.125 * corners).transpose(1, 2, 0)  # [H, W, 3]
    noise = np.random.default_rng(scene.noise_seed).uniform(-1.0, 1.0, (2, height, width, 3))
    image = np.clip(image + scene.noise * (noise[0] + noise[1]), 0.0, 1.0)  # triangular noise

    valid = np.isfinite(depth)
    r = scene.rotation
    # World normal to OpenCV camera (R^T n), then flip y and z for the visual convention.
    normal_cam = np.stack(
        [_dot(r[:, 0, None], normal), -_dot(r[:, 1, None], normal), -_dot(r[:, 2, None], normal)]
    )
    normals = np.where(valid, normal_cam, 0.0).reshape(3, height, width).transpose(1, 2, 0)  # [H, W, 3]
    intrinsics = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=np.float32)
    return SceneSample(
        image=image.astype(np.float32),
        depth=np.where(valid, depth, 0.0).reshape(height, width).astype(np.float32),
        normals=normals.astype(np.float32),
        valid=valid.reshape(height, width),
        intrinsics=intrinsics,
    )


def render_scene(seed: int, height: int = 64, width: int = 64) -> SceneSample:
    """Render the random scene of a seed at the given resolution."""
    return render(sample_scene(seed), height, width)


class SyntheticSceneDataset(torch.utils.data.Dataset):
    """Scenes seed = base_seed + index; returns tensors."""

    def __init__(self, length: int, height: int = 64, width: int = 64, base_seed: int = 0) -> None:
        self.length, self.height, self.width, self.base_seed = length, height, width, base_seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Image [3, H, W] in [0, 1], depth [1, H, W], normals [3, H, W], valid [1, H, W] bool, index []."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        sample = render_scene(self.base_seed + index, self.height, self.width)
        return {
            "image": torch.from_numpy(sample.image).permute(2, 0, 1).contiguous(),
            "depth": torch.from_numpy(sample.depth)[None],
            "normals": torch.from_numpy(sample.normals).permute(2, 0, 1).contiguous(),
            "valid": torch.from_numpy(sample.valid)[None],
            "index": torch.tensor(index, dtype=torch.long),
        }
