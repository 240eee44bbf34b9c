"""Seeded synthetic 3-D scenes with ground truth, seen by cameras (`kd_engine.data.camera3d`).

Each scene is a point cloud (what a 3-D sensor gives: positions, noisy colours, true surface
normals, a class and an object id per point) plus one or more rendered views. The renders are
made from a separate, much denser sampling of the same surfaces coloured with a per-class
*texture*; the sparse points carry only a noisy base colour. So a 2-D network looking at the
renders can see something the points do not show, which is what cross-modal distillation
(2-D features into 3-D points) needs to be worth anything. Per point and view: the pixel it
projects to and whether it is visible there (z-buffer test: hidden points get no pixel feature).

Two kinds:

- `make_room`: an indoor room (floor, two walls, 3–6 boxes / spheres / cylinders standing on
  the floor); 5 classes whose point colours overlap strongly; 4 orthographic views (48×48 by
  default) from the open side of the room.
- `make_ground_pair`: an outdoor ground plane with 2–5 objects of 5 classes (cube, tall box,
  cylinder, sphere, cone), each class with its own colour and texture, about 128 points per
  object plus ground points, seen in two frames between which each object moves with
  probability 0.4; one pinhole view (32×32 by default) per frame. `render_object` draws one
  such object alone (image and pixel mask), e.g. to train a 2-D network on single objects.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same scene.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kd_engine.data.camera3d import Camera, splat, visibility, zbuffer

ROOM_CLASSES = ("floor", "wall", "box", "sphere", "cylinder")
GROUND_CLASSES = ("cube", "tall box", "cylinder", "sphere", "cone", "ground")
GROUND = GROUND_CLASSES.index("ground")

# Per class: wave vectors (cycles per metre) of the texture ½ + ½·∏ cos(2π k·p), seen only in renders.
ROOM_TEXTURES = {0: [(2.5, 0.0, 0.0), (0.0, 2.5, 0.0)], 1: [(0.0, 0.0, 3.5)], 2: [(2.0, -2.0, 0.0)],
                 3: [(0.0, 0.0, 0.6)], 4: [(4.0, 0.0, 0.0), (0.0, 4.0, 0.0)]}
# Room base colours: close on purpose (the classes overlap in colour; per-object tint and noise on top).
ROOM_RGB = np.array([[0.55, 0.50, 0.45], [0.58, 0.52, 0.44], [0.53, 0.50, 0.47], [0.56, 0.49, 0.46],
                     [0.54, 0.52, 0.44]])
GROUND_TEXTURES = {0: [(1.2, 1.2, 1.2)], 1: [(0.0, 0.0, 2.5)], 2: [(1.5, 0.0, 0.0), (0.0, 1.5, 0.0)],
                   3: [(0.0, 0.0, 0.4)], 4: [(0.0, 0.0, 3.5), (2.0, 0.0, 0.0)], 5: [(0.5, 0.0, 0.0)]}
GROUND_RGB = np.array([[0.85, 0.25, 0.2], [0.25, 0.75, 0.3], [0.25, 0.35, 0.85], [0.9, 0.8, 0.2],
                       [0.8, 0.3, 0.8], [0.5, 0.5, 0.5]])


@dataclass
class View:
    """One camera's look at a scene: the textured render and, for every scene point, its pixel
    (col, row; −1 outside the image) and whether it is visible (not hidden behind a surface)."""

    camera: Camera
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]; background 0
    depth: np.ndarray  # (H, W) z-buffer depth; inf where nothing is drawn
    labels: np.ndarray  # (H, W) int64 class of the surface drawn at each pixel; −1 background
    pixel: np.ndarray  # (N, 2) int64 (col, row) of each scene point; −1 outside the image
    visible: np.ndarray  # (N,) bool


@dataclass
class Scene:
    """A point cloud with ground truth and its views. ``instance`` numbers the scene's surfaces
    (room: floor 0, walls 1 and 2, objects from 3; ground scene: objects from 0, ground −1)."""

    xyz: np.ndarray  # (N, 3) float32, metres, z up
    rgb: np.ndarray  # (N, 3) float32 noisy base colour in [0, 1] (no texture)
    normal: np.ndarray  # (N, 3) float32 true outward surface normal
    label: np.ndarray  # (N,) int64 class
    instance: np.ndarray  # (N,) int64 object id
    views: list[View]
    class_names: tuple[str, ...]
    moving: np.ndarray | None = None  # (N,) bool: the point's object moves between frames
    objects: list[dict] = field(default_factory=list)  # kind, class, centre, size, yaw, offset


@dataclass
class GroundPair:
    """Two frames of one ground scene; object ids agree between frames."""

    frames: tuple[Scene, Scene]
    object_class: np.ndarray  # (objects,) int64
    object_moves: np.ndarray  # (objects,) bool


# -- surfaces ---------------------------------------------------------------------------------------
def _rot(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _area(obj: dict) -> float:
    kind, (a, b, h) = obj["kind"], obj["size"]
    if kind == "box":
        return 4 * a * b + 2 * (2 * a + 2 * b) * h  # top + four sides (a, b half-extents)
    if kind == "sphere":
        return 4 * np.pi * a * a
    if kind == "cylinder":
        return np.pi * a * a + 2 * np.pi * a * h
    if kind == "cone":
        return np.pi * a * np.hypot(a, h)
    if kind == "rect":
        return float(np.linalg.norm(obj["u"]) * np.linalg.norm(obj["v"]))
    raise ValueError(f"unknown surface kind {kind!r}")


def _sample(obj: dict, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points uniformly on an object's exposed surface (no bottom face) and their normals."""
    kind, (a, b, h) = obj["kind"], obj["size"]
    centre = np.asarray(obj["centre"], dtype=np.float64)
    if kind == "rect":
        s, t = rng.random((2, n))
        xyz = obj["origin"] + s[:, None] * obj["u"] + t[:, None] * obj["v"]
        return xyz, np.repeat(np.asarray(obj["n"], dtype=np.float64)[None], n, 0)
    if kind == "box":
        faces = np.array([4 * a * b, 2 * b * h, 2 * b * h, 2 * a * h, 2 * a * h])
        face = rng.choice(5, n, p=faces / faces.sum())
        s, t = rng.uniform(-1, 1, (2, n))
        local = np.zeros((n, 3))
        normal = np.zeros((n, 3))
        top = face == 0
        local[top] = np.stack([s[top] * a, t[top] * b, np.full(top.sum(), h)], 1)
        normal[top] = (0, 0, 1)
        for f, axis, sign in ((1, 0, 1), (2, 0, -1), (3, 1, 1), (4, 1, -1)):
            m = face == f
            other = 1 - axis
            local[m, axis] = sign * (a if axis == 0 else b)
            local[m, other] = s[m] * (b if axis == 0 else a)
            local[m, 2] = (t[m] + 1) / 2 * h
            normal[m, axis] = sign
        R = _rot(obj.get("yaw", 0.0))
        return local @ R.T + centre, normal @ R.T
    if kind == "sphere":
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return centre + (0, 0, a) + a * d, d
    if kind in ("cylinder", "cone"):
        theta = rng.uniform(0, 2 * np.pi, n)
        ring = np.stack([np.cos(theta), np.sin(theta), np.zeros(n)], 1)
        if kind == "cylinder":
            top = rng.random(n) < (np.pi * a * a) / _area(obj)
            r = np.where(top, a * np.sqrt(rng.random(n)), a)
            z = np.where(top, h, rng.uniform(0, h, n))
            normal = np.where(top[:, None], (0.0, 0.0, 1.0), ring)
        else:  # cone: uniform in area means the radius fraction is sqrt-distributed toward the base
            frac = np.sqrt(rng.random(n))
            r, z = a * frac, h * (1 - frac)
            slant = np.hypot(a, h)
            normal = ring * (h / slant) + np.array([0, 0, a / slant])
        return centre + ring * r[:, None] + np.stack([np.zeros(n), np.zeros(n), z], 1), normal
    raise ValueError(f"unknown surface kind {kind!r}")


def _under(obj: dict, xy: np.ndarray) -> np.ndarray:
    """Whether ground points lie under an object's base (they would be inside it)."""
    kind, (a, b, _) = obj["kind"], obj["size"]
    d = xy - np.asarray(obj["centre"][:2])
    if kind == "box":
        local = d @ _rot(obj.get("yaw", 0.0))[:2, :2]
        return (np.abs(local[:, 0]) < a) & (np.abs(local[:, 1]) < b)
    if kind in ("cylinder", "cone"):
        return np.hypot(d[:, 0], d[:, 1]) < a
    return np.zeros(len(xy), dtype=bool)  # a sphere touches the ground at one point


def texture(xyz: np.ndarray, label: np.ndarray, table: dict) -> np.ndarray:
    """Per-point texture value in [0, 1]: ½ + ½·∏_k cos(2π k·p) over the class's wave vectors."""
    out = np.ones(len(xyz))
    for cls, waves in table.items():
        m = label == cls
        value = np.ones(m.sum())
        for k in waves:
            value *= np.cos(2 * np.pi * xyz[m] @ np.asarray(k))
        out[m] = 0.5 + 0.5 * value
    return out


def _surface_points(surfaces: list[dict], counts: list[int], rng, floor_objects: list[dict]):
    """Sample each surface ``counts[i]`` times (ground points under an object are redrawn)."""
    xyz, normal, label, inst = [], [], [], []
    for obj, n in zip(surfaces, counts):
        if obj.get("ground"):
            got, got_n = np.zeros((0, 3)), np.zeros((0, 3))
            while len(got) < n:
                p, q = _sample(obj, 2 * n, rng)
                keep = ~np.any([_under(o, p[:, :2]) for o in floor_objects], axis=0) if floor_objects \
                    else np.ones(len(p), bool)
                got, got_n = np.concatenate([got, p[keep]]), np.concatenate([got_n, q[keep]])
            p, q = got[:n], got_n[:n]
        else:
            p, q = _sample(obj, n, rng)
        xyz.append(p), normal.append(q)
        label.append(np.full(n, obj["class"])), inst.append(np.full(n, obj["id"]))
    return np.concatenate(xyz), np.concatenate(normal), np.concatenate(label), np.concatenate(inst)


def _allocate(weights: np.ndarray, total: int) -> list[int]:
    """Split ``total`` points over surfaces in proportion to ``weights`` (largest remainders)."""
    share = weights / weights.sum() * total
    counts = np.floor(share).astype(int)
    counts[np.argsort(counts - share)[: total - counts.sum()]] += 1
    return counts.tolist()


def _render_views(scene_xyz, cameras, surfaces, weights, colours, table, render_points, tolerance, rng):
    """Textured renders of the surfaces (a dense sampling splatted by z-buffer) and every scene
    point's pixel and visibility in each."""
    floor_objects = [s for s in surfaces if not s.get("ground") and s["kind"] != "rect"]
    dense, _, d_label, d_inst = _surface_points(surfaces, _allocate(weights, render_points), rng, floor_objects)
    shade = 0.3 + 0.7 * texture(dense, d_label, table)
    rgb = np.clip(colours[d_inst] * shade[:, None], 0, 1)
    views = []
    for cam in cameras:
        image, depth = splat(cam, dense, rgb.astype(np.float32))
        labels, _ = splat(cam, dense, d_label[:, None].astype(np.int64), background=-1)
        pix, vis = visibility(cam, scene_xyz, zbuffer(cam, dense), tolerance)
        views.append(View(cam, image, depth, labels[..., 0], pix, vis))
    return views


# -- rooms ----------------------------------------------------------------------------------------
def _place(rng, count: int, low: float, high: float, radii: list[float], gap: float = 0.1) -> list[np.ndarray]:
    """Object centres on the floor without overlap (rejection sampling)."""
    centres: list[np.ndarray] = []
    for r in radii[:count]:
        for _ in range(200):
            c = rng.uniform(low + r, high - r, 2)
            if all(np.linalg.norm(c - o) > r + q + gap for o, q in zip(centres, radii)):
                centres.append(c)
                break
    return centres


def make_room(seed: int, points: int = 3000, size: int = 48, views: int = 4, render_points: int = 24000,
              colour_noise: float = 0.06, object_density: float = 3.0, extent: float = 3.0,
              height: float = 1.5) -> Scene:
    """A room: floor (class 0) on [0, extent]², walls (class 1) on the planes x = 0 and y = 0, and
    3–6 boxes / spheres / cylinders (classes 2–4) on the floor; ``points`` points (objects sampled
    ``object_density`` times denser per m² than floor and walls), and ``views`` (1–4) orthographic
    renders of ``size``² pixels looking into the room from its open side."""
    if not 1 <= views <= 4:
        raise ValueError(f"views must be 1..4, got {views}")
    rng = np.random.default_rng(seed)
    L, H = extent, height
    surfaces = [dict(kind="rect", origin=np.zeros(3), u=np.array([L, 0, 0]), v=np.array([0, L, 0]), n=(0, 0, 1),
                     size=(0, 0, 0), centre=(0, 0, 0), ground=True, **{"class": 0, "id": 0}),
                dict(kind="rect", origin=np.zeros(3), u=np.array([0, L, 0]), v=np.array([0, 0, H]), n=(1, 0, 0),
                     size=(0, 0, 0), centre=(0, 0, 0), **{"class": 1, "id": 1}),
                dict(kind="rect", origin=np.zeros(3), u=np.array([L, 0, 0]), v=np.array([0, 0, H]), n=(0, 1, 0),
                     size=(0, 0, 0), centre=(0, 0, 0), **{"class": 1, "id": 2})]
    count = int(rng.integers(3, 7))
    kinds = rng.choice(["box", "sphere", "cylinder"], count)
    dims = []
    for kind in kinds:
        if kind == "box":
            dims.append((rng.uniform(0.15, 0.35), rng.uniform(0.15, 0.35), rng.uniform(0.25, 0.7)))
        elif kind == "sphere":
            r = rng.uniform(0.18, 0.35)
            dims.append((r, r, 2 * r))
        else:
            dims.append((rng.uniform(0.12, 0.28), 0.0, rng.uniform(0.35, 0.9)))
    radii = [float(np.hypot(d[0], d[1])) if k == "box" else float(d[0]) for k, d in zip(kinds, dims)]
    centres = _place(rng, count, 0.1, L, radii)
    objects = []
    for i, (kind, d, c) in enumerate(zip(kinds, dims, centres)):
        objects.append(dict(kind=str(kind), size=d, centre=np.array([c[0], c[1], 0.0]), yaw=float(rng.uniform(0, np.pi)),
                            **{"class": 2 + ["box", "sphere", "cylinder"].index(kind), "id": 3 + i}))
    surfaces += objects
    weights = np.array([_area(s) * (object_density if s["kind"] != "rect" else 1.0) for s in surfaces])
    xyz, normal, label, inst = _surface_points(surfaces, _allocate(weights, points), rng, objects)
    tint = ROOM_RGB[[s["class"] for s in surfaces]] + rng.normal(0, 0.05, (len(surfaces), 3))
    rgb = np.clip(tint[inst] + rng.normal(0, colour_noise, (len(xyz), 3)), 0, 1)
    target = np.array([L / 2, L / 2, H / 3])
    angles = [(45, 75), (15, 35), (75, 35), (45, 50)][:views]
    cameras = []
    for az, el in angles:
        a, e = np.radians(az), np.radians(el)
        direction = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        cameras.append(Camera.look_at(target + 10 * direction, target, width=size, height=size,
                                      focal=size / (1.6 * L), orthographic=True))
    pixel_size = 1.6 * L / size
    view_list = _render_views(xyz, cameras, surfaces, weights, np.clip(tint, 0, 1), ROOM_TEXTURES, render_points,
                              2 * pixel_size, rng)
    return Scene(xyz.astype(np.float32), rgb.astype(np.float32), normal.astype(np.float32), label.astype(np.int64),
                 inst.astype(np.int64), view_list, ROOM_CLASSES, np.zeros(len(xyz), bool), objects)


# -- ground-plane scenes ----------------------------------------------------------------------------
GROUND_KINDS = ("box", "box", "cylinder", "sphere", "cone")  # by class: cube, tall box, cylinder, sphere, cone


def _ground_object(cls: int, rng) -> dict:
    scale = rng.uniform(0.8, 1.2)
    size = {0: (0.4, 0.4, 0.8), 1: (0.3, 0.3, 1.6), 2: (0.4, 0.0, 1.0), 3: (0.5, 0.5, 1.0), 4: (0.5, 0.0, 1.2)}[cls]
    return dict(kind=GROUND_KINDS[cls], size=tuple(s * scale for s in size), yaw=float(rng.uniform(0, np.pi)),
                **{"class": cls})


def make_ground_pair(seed: int, objects: tuple[int, int] = (2, 5), points_per_object: int = 128,
                     ground_points: int = 512, size: int = 32, move_probability: float = 0.4,
                     render_points: int = 10000, classes: tuple[int, ...] = (0, 1, 2, 3, 4),
                     colour_noise: float = 0.05) -> GroundPair:
    """A ground plane (class 5) on [−3, 3]² with ``objects`` (low, high inclusive) objects of
    the given ``classes`` (0 cube, 1 tall box, 2 cylinder, 3 sphere, 4 cone), in two frames; each
    object moves (0.7–1.3 m, random direction) between them with ``move_probability``. Each frame
    samples its points afresh and has one ``size``² pinhole render from a raised camera."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(objects[0], objects[1] + 1))
    objs = [_ground_object(int(rng.choice(classes)), rng) for _ in range(count)]
    radii = [float(np.hypot(o["size"][0], o["size"][1])) for o in objs]
    centres = _place(rng, count, -2.2, 2.2, [r + 0.5 for r in radii])
    objs = objs[: len(centres)]
    moves = rng.random(len(objs)) < move_probability
    offsets = []
    for i, o in enumerate(objs):
        o["id"] = i
        o["centre"] = np.array([centres[i][0], centres[i][1], 0.0])
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.3)
        offsets.append(np.array([np.cos(angle), np.sin(angle), 0.0]) * dist * moves[i])
        o["offset"] = offsets[-1]
    ground = dict(kind="rect", origin=np.array([-3.0, -3.0, 0.0]), u=np.array([6.0, 0, 0]), v=np.array([0, 6.0, 0]),
                  n=(0, 0, 1), size=(0, 0, 0), centre=(0, 0, 0), ground=True, **{"class": GROUND, "id": len(objs)})
    colours = GROUND_RGB[[o["class"] for o in objs] + [GROUND]]
    camera = ground_camera(size)
    frames = []
    for frame in range(2):
        placed = [{**o, "centre": o["centre"] + (o["offset"] if frame else 0)} for o in objs]
        surfaces = placed + [ground]
        counts = [points_per_object] * len(placed) + [ground_points]
        xyz, normal, label, inst = _surface_points(surfaces, counts, rng, placed)
        rgb = np.clip(colours[inst] + rng.normal(0, colour_noise, (len(xyz), 3)), 0, 1)
        weights = np.array([_area(s) for s in surfaces])
        views = _render_views(xyz, [camera], surfaces, weights, colours, GROUND_TEXTURES, render_points, 0.3, rng)
        moving = np.append(moves, False)[inst]
        inst = np.where(inst == len(objs), -1, inst)
        frames.append(Scene(xyz.astype(np.float32), rgb.astype(np.float32), normal.astype(np.float32),
                            label.astype(np.int64), inst.astype(np.int64), views, GROUND_CLASSES, moving, placed))
    return GroundPair((frames[0], frames[1]), np.array([o["class"] for o in objs], dtype=np.int64), moves)


def render_object(cls: int, seed: int, size: int = 32, render_points: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """One object of class ``cls`` (0–4, as in `make_ground_pair`) alone, at a random spot near the
    centre, through the ground scenes' camera: (image (size, size, 3) float32 with a black
    background, mask (size, size) bool of its pixels). For training a 2-D network on single objects."""
    if cls not in range(GROUND):
        raise ValueError(f"cls must be one of 0..{GROUND - 1} (object classes), got {cls}")
    rng = np.random.default_rng(seed)
    obj = {**_ground_object(cls, rng), "id": 0}
    obj["centre"] = np.array([*rng.uniform(-1.0, 1.0, 2), 0.0])
    camera = ground_camera(size)
    dense, _, d_label, _ = _surface_points([obj], [render_points], rng, [])
    colour = np.clip(GROUND_RGB[cls] * (0.3 + 0.7 * texture(dense, d_label, GROUND_TEXTURES))[:, None], 0, 1)
    image, depth = splat(camera, dense, colour.astype(np.float32))
    return image, np.isfinite(depth)


def ground_camera(size: int = 32) -> Camera:
    """The raised pinhole camera of the ground scenes (60° field of view at ``size`` pixels)."""
    return Camera.look_at((0.0, -4.8, 4.2), (0.0, 0.4, 0.0), width=size, height=size,
                          focal=size / 2 / np.tan(np.radians(32.0)))
