"""Embedded default dataset: procedural videos whose classes can only be told apart through time.

Every clip shows one or two textured "main" objects doing the class's motion on a textured, noisy
background, plus one to three small distractor objects that drift in random directions in every
class (so they carry no label information). Six classes are the literal time reversal of another
class: the clip of `zoom_out` is a `zoom_in` clip (with its own random parameters) played
backwards, and so on for every pair in `ORDER_PAIRS`. A model that ignores frame order sees the
same distribution of frames for both classes of a pair and is at chance on them.

Classes (16 frames of 72x72 by default; every motion spans the clip, so any 8 consecutive
frames, or 8 frames at stride 2, show it):
  zoom_in / zoom_out, appear / disappear (fade), rotate_clockwise / rotate_counterclockwise,
  move_up / move_down, approach / separate (two objects): order pairs.
  left_then_right / right_then_left: of two objects side by side, the left one hops first and the
    right one 3-4 frames later (or the reverse). An order pair; note that "one object moves left,
    then right" would not be one: played backwards it still moves left, then right.
  bounce (repeated bounces on a floor), orbit (random direction): their own time reversal.

Clips are generated deterministically from `(seed, split, class, index)`, written as real H.264
videos with PyAV and turned into TFRecord shards by `prepare.prepare_split`, the same code a user's
own videos go through (docs/design.md section 8).

Example:
    data_dir = synthetic.ensure_default_dataset("/tmp/kvid_data")  # < 1 minute the first time
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import glob
import os
import shutil
import time
from collections.abc import Callable, Sequence

import av
import numpy as np
from absl import logging

from kvid.data import dataset
from kvid_training import prepare

GENERATOR_NAME = "kvid-synthetic"
# Bump whenever a change alters generated pixels: ensure_default_dataset regenerates on mismatch.
GENERATOR_VERSION = 4
NUM_FRAMES = 16
FRAME_SIZE = (72, 72)
FPS = 12
SHAPES = ("disk", "square", "ellipse", "diamond", "notched")
NOTCH_HALF_ANGLE = np.deg2rad(35.0)
SPLIT_SIZES = {"train": 150, "val": 25, "test": 50}
# Fixed split ids keep each clip's seed independent of which splits or classes are generated.
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# Class order is the label order. Every class in _REVERSED is its partner played backwards.
CLASSES = (
    "zoom_in",
    "zoom_out",
    "appear",
    "disappear",
    "rotate_clockwise",
    "rotate_counterclockwise",
    "left_then_right",
    "right_then_left",
    "move_up",
    "move_down",
    "approach",
    "separate",
    "bounce",
    "orbit",
)
_REVERSED = {
    "zoom_out": "zoom_in",
    "disappear": "appear",
    "rotate_counterclockwise": "rotate_clockwise",
    "right_then_left": "left_then_right",
    "move_down": "move_up",
    "separate": "approach",
}
ORDER_PAIRS = tuple((forward, backward) for backward, forward in _REVERSED.items())
# A horizontal flip turns clockwise into counterclockwise, and moves the object that hops first
# to the right side. Every other class maps onto itself (their random directions and axes are
# symmetric under the flip), so no class is broken by a flip.
FLIP_PAIRS = (
    ("rotate_clockwise", "rotate_counterclockwise"),
    ("left_then_right", "right_then_left"),
)
FLIP_BREAKS: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Sprite:
    """Appearance of one object: shape, procedural texture and two colours."""

    radius: float
    shape: str  # disk | square | ellipse | diamond | notched (disk, 70-degree wedge cut out)
    aspect: float  # ellipse minor / major axis
    texture: str  # stripes | checker | noise
    frequency: float
    phases: tuple[float, float]
    noise: np.ndarray  # (5, 5) grid for the noise texture
    colors: np.ndarray  # (2, 3) float in [0, 1]


@dataclasses.dataclass(frozen=True)
class Track:
    """One object's per-frame state: centre (x, y) in pixels, scale, angle (radians), opacity."""

    sprite: Sprite
    x: np.ndarray
    y: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    alpha: np.ndarray

    def reversed(self) -> Track:
        return dataclasses.replace(
            self,
            x=self.x[::-1],
            y=self.y[::-1],
            scale=self.scale[::-1],
            angle=self.angle[::-1],
            alpha=self.alpha[::-1],
        )


@dataclasses.dataclass(frozen=True)
class Clip:
    """Generated frames (T, H, W, 3) uint8 and the tracks of the main objects (not distractors)."""

    frames: np.ndarray
    tracks: list[Track]


class _Scene:
    """Random draws and time axis shared by the class plans; sizes are in 72-pixel-frame units."""

    def __init__(self, rng: np.random.Generator, num_frames: int, frame_size: tuple[int, int]):
        self.rng = rng
        self.height, self.width = frame_size
        self.unit = min(frame_size) / 72.0
        self.t = np.arange(num_frames, dtype=np.float64)
        # Progress through the clip in [0, 1]; frames15 is time in frames of a 16-frame clip.
        self.s = self.t / max(num_frames - 1, 1)
        self.frames15 = self.s * 15.0

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))

    def sprite(self, radius_range: tuple[float, float]) -> Sprite:
        rng = self.rng
        hue = rng.random()
        bright = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0))
        dark = colorsys.hsv_to_rgb(
            (hue + rng.uniform(0.25, 0.75)) % 1.0, rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.45)
        )
        return Sprite(
            radius=self.uniform(*radius_range) * self.unit,
            shape=str(rng.choice(SHAPES)),
            aspect=self.uniform(0.45, 0.75),
            texture=str(rng.choice(["stripes", "checker", "noise"])),
            frequency=self.uniform(1.2, 2.5),
            phases=(self.uniform(0, 2 * np.pi), self.uniform(0, 2 * np.pi)),
            noise=rng.random((5, 5)),
            colors=np.array([bright, dark], np.float32)[rng.permutation(2)],
        )

    def track(self, sprite: Sprite, x, y, scale=1.0, angle=None, alpha=1.0) -> Track:
        def full(value) -> np.ndarray:
            return np.broadcast_to(np.asarray(value, np.float64), self.t.shape).copy()

        if angle is None:
            angle = self.uniform(0, 2 * np.pi)
        return Track(sprite, full(x), full(y), full(scale), full(angle), full(alpha))

    def drift(self, max_pixels_per_frame: float) -> np.ndarray:
        """Slow random linear drift centred on the middle frame, so objects never sit still."""
        velocity = self.uniform(-max_pixels_per_frame, max_pixels_per_frame) * self.unit
        return velocity * (self.frames15 - 7.5)


# --- Forward class plans: each returns the main objects' tracks. ---------------------------------


def _plan_zoom_in(sc: _Scene) -> list[Track]:
    sprite = sc.sprite((9, 14))
    start, end = sc.uniform(0.3, 0.45), sc.uniform(1.25, 1.6)
    x = sc.uniform(0.35, 0.65) * sc.width + sc.drift(0.3)
    y = sc.uniform(0.35, 0.65) * sc.height + sc.drift(0.3)
    return [sc.track(sprite, x, y, scale=start * (end / start) ** sc.s)]


def _plan_appear(sc: _Scene) -> list[Track]:
    # Opacity ramps over (nearly) the whole clip so any 8 consecutive frames show the change.
    sprite = sc.sprite((8, 14))
    begin, end = sc.uniform(0.0, 0.12), sc.uniform(0.85, 1.0)
    x = sc.uniform(0.25, 0.75) * sc.width + sc.drift(0.3)
    y = sc.uniform(0.25, 0.75) * sc.height + sc.drift(0.3)
    return [sc.track(sprite, x, y, alpha=np.clip((sc.s - begin) / (end - begin), 0.0, 1.0))]


def _plan_rotate_clockwise(sc: _Scene) -> list[Track]:
    # Increasing angle is clockwise on screen (y points down). The turning object is always
    # notched (other classes draw notched objects too, so the shape tells nothing about the
    # class): a turn of a symmetric silhouette shows only in its texture's fine motion, which the
    # small presets do not learn to read, while the notch's rim travels 16-42 pixels (radius 9-15
    # pixels), a motion at the scale of the other classes'. Its texture must not alias in time:
    # at stride 2 the rim moves `step` radii per sampled frame against a stripe period of
    # `2 / frequency` radii, so the turn (at most 160 degrees, 21 per sampled frame) is paired
    # with coarse stripes or checkers (frequency at most 1.25) to keep that ratio below 0.3
    # (faster turns alias into the opposite direction). The smooth-noise texture has no such
    # bound and is not used here.
    sprite = dataclasses.replace(
        sc.sprite((9, 15)),
        shape="notched",
        texture=str(sc.rng.choice(["stripes", "checker"])),
        frequency=sc.uniform(0.8, 1.25),
    )
    total = np.deg2rad(sc.uniform(100, 160))
    x = sc.uniform(0.3, 0.7) * sc.width + sc.drift(0.2)
    y = sc.uniform(0.3, 0.7) * sc.height + sc.drift(0.2)
    return [sc.track(sprite, x, y, angle=sc.uniform(0, 2 * np.pi) + total * sc.s)]


def _hop(frames15: np.ndarray, start: float, length: float) -> np.ndarray:
    """Parabolic hop height in [0, 1]: zero outside [start, start + length], one at the apex."""
    p = np.clip((frames15 - start) / length, 0.0, 1.0)
    return 4.0 * p * (1.0 - p)


def _plan_left_then_right(sc: _Scene) -> list[Track]:
    # The left object hops, then (3-4 frames later) the right one; the hops overlap so that every
    # 8-frame window still shows which one leads. A hop is time-symmetric, so the reversed clip is
    # a natural "right then left".
    ground = sc.uniform(0.6, 0.78) * sc.height
    lead_start = sc.uniform(0.0, 2.0)
    delay = sc.uniform(3.0, 4.0)
    length = sc.uniform(max(8.0, 10.0 - lead_start), 15.0 - lead_start - delay)
    tracks = []
    for x_range, start in (((0.18, 0.36), lead_start), ((0.64, 0.82), lead_start + delay)):
        height = sc.uniform(14, 22) * sc.unit
        y = ground - height * _hop(sc.frames15, start, length)
        tracks.append(sc.track(sc.sprite((6, 10)), sc.uniform(*x_range) * sc.width, y))
    return tracks


def _plan_move_up(sc: _Scene) -> list[Track]:
    sprite = sc.sprite((7, 13))
    distance = sc.uniform(0.38, 0.62) * sc.height
    y = sc.uniform(0.42, 0.58) * sc.height + distance * (0.5 - sc.s)
    x = sc.uniform(0.25, 0.75) * sc.width + sc.drift(0.4)
    return [sc.track(sprite, x, y)]


def _plan_approach(sc: _Scene) -> list[Track]:
    # The axis is uniform in direction, so the class is symmetric under a horizontal flip.
    first, second = sc.sprite((6, 10)), sc.sprite((6, 10))
    axis = sc.uniform(0, np.pi)
    direction = np.array([np.cos(axis), np.sin(axis)])
    centre = np.array([sc.uniform(0.42, 0.58) * sc.width, sc.uniform(0.42, 0.58) * sc.height])
    start = sc.uniform(0.56, 0.7) * min(sc.width, sc.height)
    end = (first.radius + second.radius) * sc.uniform(0.9, 1.3)
    half = 0.5 * (start + (end - start) * sc.s)
    return [
        sc.track(
            sprite, centre[0] + sign * half * direction[0], centre[1] + sign * half * direction[1]
        )
        for sprite, sign in ((first, -1.0), (second, 1.0))
    ]


def _plan_bounce(sc: _Scene) -> list[Track]:
    # A period of 6-8 frames puts at least one bounce in every 8-frame window.
    sprite = sc.sprite((6, 10))
    floor = sc.uniform(0.78, 0.88) * sc.height - sprite.radius
    height = sc.uniform(16, 26) * sc.unit
    period = sc.uniform(6.0, 8.0)
    phase = sc.uniform(0.0, period)
    q = ((sc.frames15 + phase) % period) / period
    y = floor - height * 4.0 * q * (1.0 - q)
    x = sc.uniform(0.3, 0.7) * sc.width + sc.uniform(-1.2, 1.2) * sc.unit * (sc.frames15 - 7.5)
    return [sc.track(sprite, x, y)]


def _plan_orbit(sc: _Scene) -> list[Track]:
    # Random direction: orbit is its own flip and its own time reversal.
    sprite = sc.sprite((5, 9))
    radius = sc.uniform(12, 18) * sc.unit
    total = np.deg2rad(sc.uniform(240, 360)) * sc.rng.choice([-1.0, 1.0])
    phase = sc.uniform(0, 2 * np.pi) + total * sc.s
    cx, cy = sc.uniform(0.4, 0.6) * sc.width, sc.uniform(0.4, 0.6) * sc.height
    return [sc.track(sprite, cx + radius * np.cos(phase), cy + radius * np.sin(phase))]


_FORWARD: dict[str, Callable[[_Scene], list[Track]]] = {
    "zoom_in": _plan_zoom_in,
    "appear": _plan_appear,
    "rotate_clockwise": _plan_rotate_clockwise,
    "left_then_right": _plan_left_then_right,
    "move_up": _plan_move_up,
    "approach": _plan_approach,
    "bounce": _plan_bounce,
    "orbit": _plan_orbit,
}
assert set(_FORWARD) | set(_REVERSED) == set(CLASSES)


def _distractors(sc: _Scene) -> list[Track]:
    """1-3 small objects on straight paths in uniformly random directions, in every class."""
    tracks = []
    for _ in range(int(sc.rng.integers(1, 4))):
        sprite = sc.sprite((2.5, 4.5))
        heading = sc.uniform(0, 2 * np.pi)
        distance = sc.uniform(6, 30) * sc.unit
        x = sc.uniform(0.05, 0.95) * sc.width + distance * np.cos(heading) * (sc.s - 0.5)
        y = sc.uniform(0.05, 0.95) * sc.height + distance * np.sin(heading) * (sc.s - 0.5)
        tracks.append(sc.track(sprite, x, y, angle=sc.uniform(0, 2 * np.pi) + sc.drift(0.05)))
    return tracks


# --- Rendering. -----------------------------------------------------------------------------------


def _sample_grid(grid: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a small 2-D grid at fractional coordinates (clamped to the grid)."""
    gy = np.clip(gy, 0.0, grid.shape[0] - 1.001)
    gx = np.clip(gx, 0.0, grid.shape[1] - 1.001)
    y0, x0 = gy.astype(np.int64), gx.astype(np.int64)
    fy, fx = gy - y0, gx - x0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng: np.random.Generator, frame_size: tuple[int, int]) -> np.ndarray:
    """Muted two-colour low-frequency noise, a faint stripe pattern and static pixel noise."""
    height, width = frame_size
    hue = rng.random()
    colors = np.array(
        [
            colorsys.hsv_to_rgb(hue, rng.uniform(0.1, 0.4), rng.uniform(0.35, 0.55)),
            colorsys.hsv_to_rgb(
                (hue + rng.uniform(-0.15, 0.15)) % 1.0, rng.uniform(0.1, 0.4), rng.uniform(0.2, 0.7)
            ),
        ],
        np.float32,
    )
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float64)
    blobs = _sample_grid(rng.random((6, 6)), gy * 5.0 / height, gx * 5.0 / width)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    stripes = np.sin((gx * np.cos(angle) + gy * np.sin(angle)) * 2 * np.pi / period)
    mix = blobs + rng.uniform(0.0, 0.12) * stripes
    canvas = colors[0] + (colors[1] - colors[0]) * mix[..., None]
    canvas += rng.normal(0.0, 0.012, (height, width, 1))
    return canvas.astype(np.float32)


def _draw(canvas: np.ndarray, sprite: Sprite, x: float, y: float, scale, angle, alpha) -> None:
    """Alpha-composites one sprite onto `canvas` (H, W, 3) in place, with a 1-pixel soft edge."""
    radius = sprite.radius * scale
    if alpha <= 0.0 or radius <= 0.0:
        return
    reach = radius * 1.5 + 2.0  # covers square corners (sqrt 2) plus the soft edge
    height, width = canvas.shape[:2]
    x0, x1 = max(int(x - reach), 0), min(int(x + reach) + 2, width)
    y0, y1 = max(int(y - reach), 0), min(int(y + reach) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = gx - x, gy - y
    cos, sin = np.cos(angle), np.sin(angle)
    # Object coordinates in units of the radius: rotating the sampling grid by -angle turns the
    # object by +angle (clockwise on screen).
    u = (cos * dx + sin * dy) / radius
    v = (-sin * dx + cos * dy) / radius
    if sprite.shape == "disk":
        distance = np.hypot(u, v)
    elif sprite.shape == "square":
        distance = np.maximum(np.abs(u), np.abs(v)) * 1.15
    elif sprite.shape == "ellipse":
        distance = np.hypot(u, v / sprite.aspect)
    elif sprite.shape == "diamond":
        distance = (np.abs(u) + np.abs(v)) * 0.85
    else:
        distance = np.hypot(u, v)
    coverage = np.clip((1.0 - distance) * radius + 0.5, 0.0, 1.0)
    if sprite.shape == "notched":
        # The wedge |atan2(v, u)| < NOTCH_HALF_ANGLE is cut out, with a 1-pixel soft edge.
        outside = (np.abs(np.arctan2(v, u)) - NOTCH_HALF_ANGLE) * distance * radius
        coverage *= np.clip(outside + 0.5, 0.0, 1.0)
    if sprite.texture == "stripes":
        pattern = np.sin(np.pi * sprite.frequency * u + sprite.phases[0])
    elif sprite.texture == "checker":
        pattern = np.sin(np.pi * sprite.frequency * u + sprite.phases[0]) * np.sin(
            np.pi * sprite.frequency * v + sprite.phases[1]
        )
    else:
        pattern = _sample_grid(sprite.noise, (v + 1.0) * 2.0, (u + 1.0) * 2.0) - 0.5
    # Sharpen into two-tone patches with anti-aliased edges.
    mix = np.clip(0.5 + 3.0 * pattern, 0.0, 1.0)[..., None]
    color = sprite.colors[0] + (sprite.colors[1] - sprite.colors[0]) * mix
    weight = (alpha * coverage)[..., None]
    patch = canvas[y0:y1, x0:x1]
    patch += weight * (color - patch)


def synthesize(
    class_name: str,
    rng: np.random.Generator,
    num_frames: int = NUM_FRAMES,
    frame_size: tuple[int, int] = FRAME_SIZE,
) -> Clip:
    """Generates one clip of `class_name` from `rng`.

    A reversed class renders its partner's clip from the same `rng` and reverses it in time, so the
    two classes differ only in frame order.
    """
    if class_name in _REVERSED:
        clip = synthesize(_REVERSED[class_name], rng, num_frames, frame_size)
        return Clip(clip.frames[::-1].copy(), [track.reversed() for track in clip.tracks])
    if class_name not in _FORWARD:
        raise ValueError(f"Unknown synthetic class {class_name!r}; classes are {list(CLASSES)}.")
    scene = _Scene(rng, num_frames, tuple(frame_size))
    background = _background(rng, (scene.height, scene.width))
    tracks = _FORWARD[class_name](scene)
    # Distractors are drawn first so they pass behind the main objects and never hide the motion.
    drawn = _distractors(scene) + tracks
    frames = np.empty((num_frames, scene.height, scene.width, 3), np.uint8)
    for t in range(num_frames):
        canvas = background.copy()
        for track in drawn:
            _draw(
                canvas,
                track.sprite,
                track.x[t],
                track.y[t],
                track.scale[t],
                track.angle[t],
                track.alpha[t],
            )
        frames[t] = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Clip(frames, tracks)


def clip_rng(seed: int, split: str, class_name: str, index: int) -> np.random.Generator:
    """The clip's own generator: a function of (seed, split, class, index) only."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"Unknown split {split!r}; expected one of {list(_SPLIT_IDS)}.")
    entropy = [seed, _SPLIT_IDS[split], CLASSES.index(class_name), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def clip_id(split: str, class_name: str, index: int) -> str:
    return f"{split}/{class_name}/{index:05d}"


def clip_frames(
    seed: int,
    split: str,
    class_name: str,
    index: int,
    num_frames: int = NUM_FRAMES,
    frame_size: tuple[int, int] = FRAME_SIZE,
) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of one dataset clip, before video encoding."""
    rng = clip_rng(seed, split, class_name, index)
    return synthesize(class_name, rng, num_frames, frame_size).frames


def write_video(path: str, frames: np.ndarray, fps: int = FPS) -> None:
    """Writes uint8 RGB frames (T, H, W, 3) as an H.264 .mp4 (yuv444p, CRF 10).

    yuv444p rather than yuv420p: chroma subsampling smears the thin coloured textures (mean error
    ~17 vs ~1 grey level at 72x72); ffmpeg-based players decode High 4:4:4 fine. x264's macroblock
    tree rate control is off: with it, the same frames sometimes encoded differently depending on
    what the process had run before (measured after tf.data calls), and generation must be
    byte-identical. One encoder thread keeps x264 deterministic too.
    """
    height, width = frames.shape[1:3]
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.options = {
            "crf": "10",
            "preset": "veryfast",
            "threads": "1",
            "x264-params": "mbtree=0",
        }
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_clip(job: tuple) -> None:
    seed, split, class_name, index, path, num_frames, frame_size = job
    write_video(path, clip_frames(seed, split, class_name, index, num_frames, frame_size))


def _generator_metadata(
    seed: int, scale: float, split_sizes: dict, num_frames: int, frame_size
) -> dict:
    return dict(
        name=GENERATOR_NAME,
        version=GENERATOR_VERSION,
        seed=seed,
        scale=scale,
        split_sizes=dict(split_sizes),
        num_frames=num_frames,
        frame_size=list(frame_size),
        codec="libx264 yuv444p crf 10 mbtree=0",
    )


def generate(
    out_dir: str,
    seed: int = 0,
    scale: float = 1.0,
    classes: Sequence[str] | None = None,
    split_sizes: dict[str, int] | None = None,
    num_frames: int = NUM_FRAMES,
    frame_size: tuple[int, int] = FRAME_SIZE,
    num_shards: int | None = None,
    num_workers: int | None = None,
) -> dict:
    """Generates the synthetic dataset into `out_dir` and prepares its TFRecords.

    Writes `videos/{split}/{class}/{index:05d}.mp4`, the manifests `{split}.csv`, the shards
    (through `prepare.prepare_split`) and `dataset.json` (last, so it marks a complete dataset).

    Args:
      seed: dataset seed; each clip's randomness comes from (seed, split, class, index), so splits
        are disjoint by construction and a class subset gives the same clips as the full set.
      scale: multiplies the clips per class and split of `split_sizes` (at least one clip).
      classes: subset of `CLASSES` (default all), kept in `CLASSES` order.
      split_sizes: clips per class for each split at scale 1 (default `SPLIT_SIZES`).
      num_workers: processes for video encoding and preparation; None = number of CPUs.

    Returns:
      The dataset info (contents of `dataset.json`).
    """
    requested = list(CLASSES) if classes is None else list(classes)
    unknown = sorted(set(requested) - set(CLASSES))
    if unknown or not requested:
        raise ValueError(f"classes {unknown or requested} are not a non-empty subset of {CLASSES}.")
    classes = [name for name in CLASSES if name in requested]
    split_sizes = dict(split_sizes or SPLIT_SIZES)
    counts = {split: max(1, round(size * scale)) for split, size in split_sizes.items()}
    start_time = time.time()

    jobs, manifests = [], {}
    for split, count in counts.items():
        rows = []
        for class_name in classes:
            folder = os.path.join(out_dir, "videos", split, class_name)
            os.makedirs(folder, exist_ok=True)
            for index in range(count):
                relative = f"videos/{split}/{class_name}/{index:05d}.mp4"
                rows.append((relative, class_name, clip_id(split, class_name, index)))
                path = os.path.join(out_dir, relative)
                jobs.append((seed, split, class_name, index, path, num_frames, tuple(frame_size)))
        manifests[split] = rows
    # One pool for the videos and every split: starting workers is the expensive part.
    summaries = []
    with prepare.process_pool(num_workers, len(jobs)) as pool:
        for _ in prepare.map_in_processes(_write_clip, jobs, num_workers, pool):
            pass
        logging.info("Wrote %d synthetic videos in %.1f s.", len(jobs), time.time() - start_time)
        for split, rows in manifests.items():
            csv_path = os.path.join(out_dir, f"{split}.csv")
            with open(csv_path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "label", "id"])
                writer.writerows(rows)
            summary = prepare.prepare_split(
                csv_path, out_dir, split, classes, num_shards, num_workers=num_workers
            )
            if summary["failures"]:
                raise RuntimeError(f"Generated videos failed to decode: {summary['failures'][:3]}")
            summaries.append(summary)

    # With a class subset, keep only complete pairs; a flip pair missing its partner means the
    # flipped clip belongs to no class of this dataset, so that class must not be flipped.
    present = set(classes)
    order_pairs = [pair for pair in ORDER_PAIRS if set(pair) <= present]
    flip_pairs = [pair for pair in FLIP_PAIRS if set(pair) <= present]
    flip_breaks = [name for name in classes if name in FLIP_BREAKS]
    flip_breaks += [
        name for pair in FLIP_PAIRS for name in pair if name in present and not set(pair) <= present
    ]
    dataset.write_dataset_info(
        out_dir,
        classes,
        order_pairs,
        flip_pairs,
        flip_breaks=flip_breaks,
        generator=_generator_metadata(seed, scale, split_sizes, num_frames, frame_size),
        **prepare.merge_summaries(summaries),
    )
    logging.info("Synthetic dataset ready in %s (%.1f s).", out_dir, time.time() - start_time)
    return dataset.read_dataset_info(out_dir)


def default_dataset_ready(data_dir: str, seed: int = 0, scale: float = 1.0) -> bool:
    """Whether `data_dir` holds the complete default dataset of this seed and scale.

    `dataset.json` is written last, so its presence with the expected generator metadata means
    the shards are complete.
    """
    info_path = os.path.join(data_dir, dataset.DATASET_INFO)
    if not os.path.exists(info_path):
        return False
    try:
        info = dataset.read_dataset_info(data_dir)
    except (OSError, ValueError):  # being replaced right now
        return False
    expected = _generator_metadata(seed, scale, SPLIT_SIZES, NUM_FRAMES, FRAME_SIZE)
    return info.get("generator") == expected and list(info["classes"]) == list(CLASSES)


def ensure_default_dataset(data_dir: str, seed: int = 0, scale: float = 1.0) -> str:
    """Returns `data_dir` holding the default synthetic dataset, generating it if needed.

    Returns at once if `data_dir/dataset.json` was written by this generator version with the same
    seed and scale and its shards are present; otherwise (re)generates everything. Refuses to touch
    a `data_dir` that holds another (non-synthetic) dataset.
    """
    expected = _generator_metadata(seed, scale, SPLIT_SIZES, NUM_FRAMES, FRAME_SIZE)
    info_path = os.path.join(data_dir, dataset.DATASET_INFO)
    if os.path.exists(info_path):
        info = dataset.read_dataset_info(data_dir)
        generator = info.get("generator")
        if generator is None or generator.get("name") != GENERATOR_NAME:
            raise ValueError(
                f"{info_path} describes a dataset that kvid's synthetic generator did not write; "
                "pass an empty or synthetic data_dir instead of overwriting it."
            )
        shards_present = all(
            glob.glob(dataset.shard_pattern(data_dir, split)) for split in info["splits"]
        )
        if generator == expected and list(info["classes"]) == list(CLASSES) and shards_present:
            return data_dir
        logging.info("Regenerating %s: %s differs from %s.", data_dir, generator, expected)
        # Older videos (another scale or version) would otherwise linger next to the new ones.
        shutil.rmtree(os.path.join(data_dir, "videos"), ignore_errors=True)
        os.remove(info_path)
    generate(data_dir, seed=seed, scale=scale)
    return data_dir
