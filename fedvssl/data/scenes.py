"""How a synthetic video looks and moves: random appearance, motion tracks, vectorised drawing.

A scene is a few textured objects on a muted, textured, static background. :func:`sample_appearance`
draws an object's shape, colours, texture, size and orientation (and the background, or takes the
one given) without knowing the class; :func:`sample_track` draws the motion of one class
(:data:`MOTIONS`) with random speed, path and speed profile; :func:`render_video` draws every frame
of one object at once with numpy, on the background or on frames already drawn; :func:`change_light`
brightens or darkens a whole video steadily over its frames (off in the default dataset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

MOTIONS = (
    "MoveRight",
    "MoveLeft",
    "MoveUp",
    "MoveDown",
    "CircleClockwise",
    "CircleAnticlockwise",
    "Bounce",
    "Spin",
    "ZoomIn",
    "ZoomOut",
)
SHAPES = ("ellipse", "rectangle", "triangle", "cross", "diamond")
OBJECT_TEXTURES = ("solid", "stripes", "checker", "rings")
BACKGROUND_CONTRAST = 0.4  # the clutter's deviations from its mean colour are scaled by this
OBJECT_RADIUS = (0.14, 0.22)  # object radius as a fraction of the frame height


@dataclass(frozen=True)
class Appearance:
    """How one video looks: the object's shape, size, colours and texture, and the background."""

    shape: str
    aspect: float  # minor/major axis of the object
    radius: float  # object radius in pixels at scale 1
    orientation: float  # radians
    colour_a: np.ndarray  # [3] RGB in [0, 1]
    colour_b: np.ndarray  # [3]
    texture: str
    texture_freq: float  # cycles per object radius
    texture_phase: float
    background: np.ndarray  # [H, W, 3] float32 in [0, 1]


@dataclass(frozen=True)
class Track:
    """How the object moves: its centre, scale and rotation in every frame."""

    center: np.ndarray  # [T, 2] (x, y) in pixels
    scale: np.ndarray  # [T]
    angle: np.ndarray  # [T] radians


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Draw a "dead leaves" clutter: overlapping opaque discs and boxes of random colours.

    Occlusion and edges at every scale are what natural frames have, and what CtP needs: it pastes
    pieces of the clip itself, which must carry texture to be seen (a flat background would make
    every pasted patch invisible and the pretext task unlearnable). The clutter is then muted
    (its contrast scaled by :data:`BACKGROUND_CONTRAST`), so that the objects, whose motion
    defines the class, stand out from it.
    """
    canvas = np.empty((height, width, 3), np.float32)  # [H, W, 3]
    canvas[:] = rng.uniform(0.2, 0.8, 3)
    palette = rng.uniform(0.25, 0.75, 3)  # colours scatter around a per-video palette
    spread = rng.uniform(0.2, 0.35)
    count = int(rng.integers(60, 120) * width * height / (128 * 96))
    small, large = 0.03 * height, 0.3 * height
    radii = np.sort(small * (large / small) ** rng.random(count))[::-1]  # big leaves first
    for radius in radii:
        colour = tuple(float(c) for c in np.clip(palette + rng.normal(0, spread, 3), 0, 1))
        cx, cy = rng.uniform(-radius, width + radius), rng.uniform(-radius, height + radius)
        if rng.random() < 0.5:
            cv2.circle(canvas, (int(cx), int(cy)), max(1, int(radius)), colour, -1, cv2.LINE_AA)
        else:
            theta = rng.uniform(0, math.pi)
            half = radius * np.array([1.0, rng.uniform(0.3, 1.0)])
            axes = np.array(
                [[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]]
            )
            corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half @ axes + (cx, cy)
            cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], colour, cv2.LINE_AA)
    mean = canvas.reshape(-1, 3).mean(axis=0)
    canvas = mean + BACKGROUND_CONTRAST * (canvas - mean)
    grain = rng.normal(0, 0.03, (height, width, 1)).astype(np.float32)  # fine texture
    return np.clip(canvas + grain, 0, 1).astype(np.float32)  # [H, W, 3]


def sample_appearance(
    rng: np.random.Generator, width: int, height: int, background: np.ndarray | None = None
) -> Appearance:
    """Draw a random object (and background); the distribution does not depend on the class.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random stream of this video.
    width, height : int
        Frame size in pixels.
    background : numpy.ndarray, optional
        The scene's background ``[H, W, 3]`` in ``[0, 1]`` when it has one already (a second
        object); a new one is drawn otherwise.

    Returns
    -------
    Appearance
        The object's look, with the background.
    """
    background = _background(rng, width, height) if background is None else background
    bg_mean = background.reshape(-1, 3).mean(0)
    colour_a = rng.uniform(0, 1, 3)
    for _ in range(20):  # keep the object visible against the background
        if np.linalg.norm(colour_a - bg_mean) > 0.4:
            break
        colour_a = rng.uniform(0, 1, 3)
    return Appearance(
        shape=SHAPES[rng.integers(len(SHAPES))],
        aspect=float(rng.uniform(0.5, 0.8)),  # never round: spinning must show
        radius=float(rng.uniform(*OBJECT_RADIUS) * height),
        orientation=float(rng.uniform(0, 2 * math.pi)),
        colour_a=colour_a,
        colour_b=np.clip(colour_a + rng.uniform(-0.35, 0.35, 3), 0, 1),
        texture=OBJECT_TEXTURES[rng.integers(len(OBJECT_TEXTURES))],
        texture_freq=float(rng.uniform(1.2, 2.5)),
        texture_phase=float(rng.uniform(0, 2 * math.pi)),
        background=background,
    )


def _speed_profile(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Progress in [0, 1] along a path: constant speed, speeding up or slowing down."""
    kind = rng.integers(3)
    if kind == 0:
        return t
    return t**2 if kind == 1 else 1 - (1 - t) ** 2


def _linear(
    motion: str, rng: np.random.Generator, t: np.ndarray, size: tuple[int, int], margin: float
) -> np.ndarray:
    width, height = size
    horizontal = motion in ("MoveRight", "MoveLeft")
    length, across = (width, height) if horizontal else (height, width)
    travel = min(rng.uniform(0.35, 0.6) * length, length - 2 * margin - 1)
    start = rng.uniform(margin, length - margin - travel)
    along = start + travel * _speed_profile(rng, t)  # [T]
    if motion in ("MoveLeft", "MoveUp"):
        along = length - along
    side = np.full_like(along, rng.uniform(margin, across - margin))
    return np.stack([along, side] if horizontal else [side, along], axis=1)


def sample_track(
    motion: str, rng: np.random.Generator, num_frames: int, size: tuple[int, int], radius: float
) -> Track:
    """Draw the object's motion for one video of class ``motion``.

    Parameters
    ----------
    motion : str
        One of :data:`MOTIONS`.
    rng : numpy.random.Generator
        Random stream of this video.
    num_frames : int
        Number of frames T.
    size : tuple[int, int]
        Frame (width, height) in pixels.
    radius : float
        Object radius in pixels at scale 1 (keeps the object inside the frame).

    Returns
    -------
    Track
        Centre [T, 2], scale [T] and angle [T] per frame.
    """
    width, height = size
    t = np.linspace(0.0, 1.0, num_frames)  # [T]
    frames = np.arange(num_frames, dtype=np.float64)
    scale = np.ones(num_frames)
    spin = np.zeros(num_frames)
    margin = 1.1 * radius
    if motion in ("MoveRight", "MoveLeft", "MoveUp", "MoveDown"):
        center = _linear(motion, rng, t, size, margin)
    elif motion in ("CircleClockwise", "CircleAnticlockwise"):
        cx = width / 2 + rng.uniform(-0.08, 0.08) * width
        cy = height / 2 + rng.uniform(-0.05, 0.05) * height
        ring = min(rng.uniform(0.2, 0.3) * height, cy - margin, height - cy - margin)
        sense = 1.0 if motion == "CircleClockwise" else -1.0  # image y points down
        phi = rng.uniform(0, 2 * math.pi) + sense * rng.uniform(0.13, 0.22) * frames
        center = np.stack([cx + ring * np.cos(phi), cy + ring * np.sin(phi)], axis=1)
    elif motion == "Bounce":
        floor = height - margin
        lift = min(rng.uniform(0.35, 0.5) * height, floor - margin)
        phase = rng.uniform(0, math.pi) + math.pi * frames / rng.uniform(10, 16)
        y = floor - lift * np.abs(np.sin(phase))
        center = np.stack([np.full_like(y, rng.uniform(margin, width - margin)), y], axis=1)
    elif motion == "Spin":
        spin = rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.25) * frames
        xy = [rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)]
        center = np.tile(xy, (num_frames, 1))
    elif motion in ("ZoomIn", "ZoomOut"):
        small, big = rng.uniform(0.45, 0.6), rng.uniform(1.5, 1.8)
        ends = (small, big) if motion == "ZoomIn" else (big, small)
        scale = np.exp(np.log(ends[0]) + (np.log(ends[1]) - np.log(ends[0])) * t)
        reach = min(big * margin, height / 2 - 1)
        xy = [rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)]
        center = np.tile(xy, (num_frames, 1))
    else:
        raise ValueError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")
    return Track(center=center, scale=scale, angle=spin)


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray, aspect: float) -> np.ndarray:
    """Signed distance-like field in object units: negative inside, 0 on the outline."""
    if shape == "ellipse":
        return np.sqrt(u**2 + (v / aspect) ** 2) - 1
    if shape == "rectangle":
        return np.maximum(np.abs(u), np.abs(v) / aspect) / 0.8 - 1
    if shape == "diamond":
        return np.abs(u) + np.abs(v) / aspect - 1
    if shape == "triangle":
        sides = [
            u * math.cos(a) + v * math.sin(a) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        return np.maximum(np.maximum(sides[0], sides[1]), sides[2]) / 0.5 - 1
    bar = 0.35  # cross: the union of two bars
    return (
        np.minimum(np.maximum(np.abs(u), np.abs(v) / bar), np.maximum(np.abs(u) / bar, np.abs(v)))
        - 1
    )


def _texture(look: Appearance, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    f, phase = look.texture_freq, look.texture_phase
    if look.texture == "stripes":
        return 0.5 + 0.5 * np.sin(2 * math.pi * f * u + phase)
    if look.texture == "checker":
        return (np.floor(f * u + phase) + np.floor(f * v + phase)) % 2
    if look.texture == "rings":  # centred off the axis, so that spinning shows
        return 0.5 + 0.5 * np.sin(2 * math.pi * f * np.sqrt((u - 0.4) ** 2 + v**2) + phase)
    return np.zeros_like(u)


def render_video(look: Appearance, track: Track, base: np.ndarray | None = None) -> np.ndarray:
    """Draw one object in every frame at once (vectorised over frames and pixels).

    Parameters
    ----------
    look : Appearance
        Object and background.
    track : Track
        Per-frame centre, scale and angle.
    base : numpy.ndarray, optional
        RGB uint8 frames ``[T, H, W, 3]`` to draw on (other objects already drawn); the
        background otherwise.

    Returns
    -------
    numpy.ndarray
        RGB frames, uint8, [T, H, W, 3].
    """
    height, width = look.background.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # [H, W]
    dx = xs[None] - track.center[:, 0, None, None].astype(np.float32)  # [T, H, W]
    dy = ys[None] - track.center[:, 1, None, None].astype(np.float32)
    angle = (look.orientation + track.angle).astype(np.float32)[:, None, None]  # [T, 1, 1]
    pixels = (look.radius * track.scale).astype(np.float32)[:, None, None]  # radius in pixels
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / pixels  # object coordinates, radius 1
    v = (-sin * dx + cos * dy) / pixels
    alpha = np.clip(0.5 - _shape_distance(look.shape, u, v, look.aspect) * pixels, 0, 1)
    t, y, x = np.nonzero(alpha)  # composite only the object's pixels
    a = alpha[t, y, x][:, None]  # [N, 1]
    tex = _texture(look, u[t, y, x], v[t, y, x])[:, None]  # [N, 1]
    colour = look.colour_a * (1 - tex) + look.colour_b * tex  # [N, 3]
    frames = np.empty((len(track.scale), height, width, 3), np.uint8)  # [T, H, W, 3]
    frames[:] = _to_uint8(look.background) if base is None else base
    under = frames[t, y, x].astype(np.float32) / 255  # [N, 3]
    frames[t, y, x] = _to_uint8(under * (1 - a) + colour * a)
    return frames


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def change_light(video: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Brighten or darken a whole video steadily, as a scene whose light changes while it is filmed.

    The log of every pixel's gain goes linearly from ``-c/2`` at the first frame to ``c/2`` at the
    last, with ``|c|`` drawn uniformly from ``[amount/2, amount]`` and its sign at random: the
    scene brightens or darkens by a factor between ``exp(amount/2)`` and ``exp(amount)`` from the
    first frame to the last. ``amount`` 0 returns the video unchanged and draws nothing from
    ``rng``.

    Parameters
    ----------
    video : numpy.ndarray
        RGB uint8 frames [T, H, W, 3].
    rng : numpy.random.Generator
        Random stream of this video.
    amount : float
        The largest change of log-brightness over the video (0: constant light).

    Returns
    -------
    numpy.ndarray
        RGB uint8 frames [T, H, W, 3].
    """
    if amount == 0:
        return video
    change = rng.choice([-1.0, 1.0]) * rng.uniform(amount / 2, amount)
    gain = np.exp(change * np.linspace(-0.5, 0.5, len(video), dtype=np.float32))  # [T]
    return _to_uint8(video.astype(np.float32) / 255 * gain[:, None, None, None])
