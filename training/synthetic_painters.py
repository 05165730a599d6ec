"""The painters of the synthetic mini-iSAID: a canvas with its class labels, the land/water/road background,
and each kind of object (vehicles, ships, tanks, planes, pools, courts) with its distractors.

Every painter draws on the image and, for objects of a class, on the labels; randomness comes from the canvas's
generator only, so a scene is a pure function of its seed (see :func:`training.synthetic.generate`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from factseg_core.classes import ISAID_CLASSES

CLASS_ID: dict[str, int] = {c.name: c.id for c in ISAID_CLASSES}

Point = tuple[float, float]
RGB = tuple[int, int, int]

CAR_COLOURS: tuple[RGB, ...] = ((236, 236, 236), (28, 28, 32), (165, 32, 30), (38, 58, 140), (182, 182, 188),
                                (110, 110, 116), (220, 200, 60))
TRUCK_COLOURS: tuple[RGB, ...] = ((226, 226, 220), (205, 190, 60), (172, 176, 182), (210, 95, 40), (60, 110, 60))
SHIP_COLOURS: tuple[RGB, ...] = ((238, 238, 238), (200, 200, 204), (150, 62, 52), (70, 80, 95))
ROOF_COLOURS: tuple[RGB, ...] = ((150, 72, 60), (120, 110, 105), (170, 95, 70), (95, 95, 100), (185, 170, 150))


def _rotate(points: Sequence[Point], angle: float, cx: float, cy: float) -> list[Point]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _rect(length: float, width: float, x0: float | None = None) -> list[Point]:
    """Rectangle along x, centred on the origin (or starting at ``x0``)."""
    a = -length / 2 if x0 is None else x0
    return [(a, -width / 2), (a + length, -width / 2), (a + length, width / 2), (a, width / 2)]


def _jitter(colour: RGB, rng: np.random.Generator, amount: int = 12) -> RGB:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in colour)  # type: ignore[return-value]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth random field in [0, 1] with features about ``cell`` pixels across."""
    small = rng.random((max(2, height // cell + 2), max(2, width // cell + 2))).astype(np.float32)
    field = np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.BICUBIC))
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


@dataclass
class Canvas:
    """An image being painted, its class-id labels, and where things may still go."""

    rng: np.random.Generator
    image: Image.Image
    labels: Image.Image
    water: np.ndarray
    road: np.ndarray
    occupied: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def free(self, points: Sequence[Point], margin: int = 2, where: np.ndarray | None = None) -> bool:
        """True if the polygon's box (plus margin) lies inside the image, on free ground, and (optionally) on
        ``where`` at its centre."""
        w, h = self.size
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, y0 = int(math.floor(min(xs))) - margin, int(math.floor(min(ys))) - margin
        x1, y1 = int(math.ceil(max(xs))) + margin + 1, int(math.ceil(max(ys))) + margin + 1
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h or self.occupied[y0:y1, x0:x1].any():
            return False
        if where is not None:
            cx, cy = int(sum(xs) / len(xs)), int(sum(ys) / len(ys))
            return bool(where[cy, cx])
        return True

    def claim(self, points: Sequence[Point], margin: int = 2) -> None:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, y0 = max(0, int(math.floor(min(xs))) - margin), max(0, int(math.floor(min(ys))) - margin)
        x1, y1 = int(math.ceil(max(xs))) + margin + 1, int(math.ceil(max(ys))) + margin + 1
        self.occupied[y0:y1, x0:x1] = True

    def paint(self, points: Sequence[Point], colour: RGB, class_name: str | None = None) -> None:
        """Fill a polygon in the image, and in the labels with the class (None: leave labels as they are)."""
        ImageDraw.Draw(self.image).polygon(list(points), fill=colour)
        if class_name is not None:
            ImageDraw.Draw(self.labels).polygon(list(points), fill=CLASS_ID[class_name])

    def shadow(self, points: Sequence[Point], offset: float = 2.0) -> None:
        self.paint([(x + offset, y + offset * 0.7) for x, y in points], (30, 34, 30))


# --- background -------------------------------------------------------------------------------------------------

def _background(rng: np.random.Generator, width: int, height: int) -> Canvas:
    """Land (grass/soil/urban mixture) with an optional water body; textures at several scales."""
    mix = _smooth_noise(rng, height, width, 96)[..., None]
    urban = _smooth_noise(rng, height, width, 160)[..., None]
    grass = np.array([76, 102, 54], np.float32)
    soil = np.array([148, 132, 100], np.float32)
    town = np.array([128, 124, 118], np.float32)
    land = grass * mix + soil * (1 - mix)
    land = land * (1 - 0.6 * urban) + town * 0.6 * urban
    texture = (_smooth_noise(rng, height, width, 6) - 0.5) * 26
    arr = land + texture[..., None] + rng.normal(0, 5, (height, width, 3))

    water = np.zeros((height, width), bool)
    if rng.random() < 0.6:
        field = _smooth_noise(rng, height, width, max(width, height) // 2)
        water = field > np.quantile(field, rng.uniform(0.55, 0.8))
        ripple = (_smooth_noise(rng, height, width, 4) - 0.5) * 8
        sea = np.array([34, 60, 76], np.float32) + ripple[..., None] + rng.normal(0, 2, (height, width, 3))
        arr[water] = sea[water]
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    labels = Image.new("L", (width, height), CLASS_ID["background"])
    return Canvas(rng, image, labels, water, np.zeros((height, width), bool), np.zeros((height, width), bool))


def _roads(cv: Canvas) -> list[tuple[Point, float, float]]:
    """Straight roads on land (none over water: that would be a bridge); returns (point, angle, width)."""
    rng, (w, h) = cv.rng, cv.size
    roads = []
    for _ in range(int(rng.integers(1, 4))):
        angle = float(rng.choice([0.0, math.pi / 2, rng.uniform(0, math.pi)]))
        width = float(rng.uniform(11, 18))
        px, py = float(rng.uniform(0.15, 0.85) * w), float(rng.uniform(0.15, 0.85) * h)
        reach = 2 * (w + h)
        dx, dy = math.cos(angle) * reach, math.sin(angle) * reach
        mask_img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask_img).line([(px - dx, py - dy), (px + dx, py + dy)], fill=255, width=int(width))
        mask = (np.asarray(mask_img) > 0) & ~cv.water
        arr = np.asarray(cv.image).copy()
        asphalt = np.array([92, 92, 96], np.float32) + cv.rng.normal(0, 3, (h, w, 3))
        arr[mask] = np.clip(asphalt[mask], 0, 255).astype(np.uint8)
        cv.image = Image.fromarray(arr, "RGB")
        cv.road |= mask
        # dashed centre line: background paint, a distractor for thin objects
        draw = ImageDraw.Draw(cv.image)
        for t in np.arange(-reach, reach, 14.0):
            a = (px + math.cos(angle) * t, py + math.sin(angle) * t)
            b = (px + math.cos(angle) * (t + 6), py + math.sin(angle) * (t + 6))
            if 0 <= a[0] < w and 0 <= a[1] < h and mask[int(a[1]), int(a[0])]:
                draw.line([a, b], fill=(215, 215, 205), width=1)
        roads.append(((px, py), angle, width))
    return roads


def _area_scale(cv: Canvas) -> float:
    w, h = cv.size
    return w * h / 512.0**2


def _count(cv: Canvas, low: float, high: float) -> int:
    return int(cv.rng.poisson(cv.rng.uniform(low, high) * _area_scale(cv)))


def _try(cv: Canvas, attempts: int, make: Callable[[], bool]) -> None:
    for _ in range(attempts):
        if make():
            return


# --- objects --------------------------------------------------------------------------------------------------

def _vehicle(cv: Canvas, cx: float, cy: float, angle: float, large: bool, where: np.ndarray | None) -> bool:
    rng = cv.rng
    if large:
        length, width, colour = rng.uniform(18, 28), rng.uniform(7, 9), TRUCK_COLOURS[rng.integers(len(TRUCK_COLOURS))]
    else:
        length, width, colour = rng.uniform(8, 11), rng.uniform(4.2, 5.5), CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
    body = _rotate(_rect(length, width), angle, cx, cy)
    if not cv.free(body, 1, where):
        return False
    cv.shadow(body, 1.5)
    name = "large_vehicle" if large else "small_vehicle"
    cv.paint(body, _jitter(colour, rng), name)
    if large:  # cab, separated by a dark gap
        cab = _rotate(_rect(length * 0.2, width * 0.9, x0=length * 0.28), angle, cx, cy)
        gap = _rotate(_rect(1.2, width, x0=length * 0.26), angle, cx, cy)
        cv.paint(gap, (45, 45, 45))
        cv.paint(cab, _jitter(colour, rng, 30))
    else:  # windscreen
        glass = _rotate(_rect(length * 0.18, width * 0.8, x0=length * 0.08), angle, cx, cy)
        cv.paint(glass, (40, 48, 58))
    cv.claim(body, 1)
    return True


def _road_vehicles(cv: Canvas, roads: list[tuple[Point, float, float]]) -> None:
    rng, (w, h) = cv.rng, cv.size
    for (px, py), angle, width in roads:
        for _ in range(_count(cv, 5, 12)):
            large = rng.random() < 0.25
            t = rng.uniform(-0.75, 0.75) * max(w, h)
            lane = rng.choice([-1, 1]) * width * 0.22
            cx = px + math.cos(angle) * t - math.sin(angle) * lane
            cy = py + math.sin(angle) * t + math.cos(angle) * lane
            heading = angle + (math.pi if lane < 0 else 0.0) + rng.normal(0, 0.03)
            if 0 <= cx < w and 0 <= cy < h:
                _vehicle(cv, cx, cy, heading, large, cv.road)


def _parking_lots(cv: Canvas) -> None:
    """Asphalt lots with white stall lines and rows of parked cars (and some trucks)."""
    rng, (w, h) = cv.rng, cv.size
    for _ in range(_count(cv, 0.5, 1.5)):
        lw, lh = rng.uniform(60, 150), rng.uniform(50, 120)
        x0, y0 = rng.uniform(0, w - lw), rng.uniform(0, h - lh)
        box = [(x0, y0), (x0 + lw, y0), (x0 + lw, y0 + lh), (x0, y0 + lh)]
        if not cv.free(box, 3) or cv.water[int(y0):int(y0 + lh), int(x0):int(x0 + lw)].mean() > 0.01:
            continue
        cv.paint(box, _jitter((74, 74, 78), rng, 8))
        draw = ImageDraw.Draw(cv.image)
        spacing, row_h = 7.0, 12.0
        for ry in np.arange(y0 + 2, y0 + lh - row_h, row_h + 6):
            for sx in np.arange(x0 + 2, x0 + lw - spacing, spacing):
                draw.line([(sx, ry), (sx, ry + row_h)], fill=(200, 200, 195), width=1)
                if rng.random() < 0.55:
                    large = rng.random() < 0.08
                    cx, cy = sx + spacing / 2, ry + row_h / 2
                    if large:
                        continue  # trucks do not fit a stall; they are placed on roads
                    _vehicle(cv, cx, cy, math.pi / 2 + rng.normal(0, 0.05) + rng.choice([0, math.pi]), False, None)
        cv.claim(box, 1)


def _ships(cv: Canvas) -> None:
    rng, (w, h) = cv.rng, cv.size
    if not cv.water.any():
        return
    ys, xs = np.nonzero(cv.water)
    for _ in range(_count(cv, 3, 9)):
        def make() -> bool:
            i = rng.integers(len(xs))
            cx, cy, angle = float(xs[i]), float(ys[i]), rng.uniform(0, 2 * math.pi)
            length, width = rng.uniform(20, 60), rng.uniform(6, 13)
            hull = _rotate([(-length / 2, -width / 2), (length * 0.25, -width / 2), (length / 2, 0),
                            (length * 0.25, width / 2), (-length / 2, width / 2)], angle, cx, cy)
            if not cv.free(hull, 3) or not all(
                0 <= int(y) < h and 0 <= int(x) < w and cv.water[int(y), int(x)] for x, y in hull
            ):
                return False
            if rng.random() < 0.5:  # wake behind the stern (water, i.e. background)
                wake = _rotate([(-length / 2, -width / 3), (-length * 1.6, -width), (-length * 1.6, width),
                                (-length / 2, width / 3)], angle, cx, cy)
                cv.paint(wake, (70, 96, 108))
            cv.shadow(hull, 1.5)
            colour = SHIP_COLOURS[rng.integers(len(SHIP_COLOURS))]
            cv.paint(hull, _jitter(colour, rng), "ship")
            cabin = _rotate(_rect(length * 0.25, width * 0.6, x0=-length * 0.4), angle, cx, cy)
            cv.paint(cabin, _jitter((225, 225, 225), rng, 20))
            cv.claim(hull, 3)
            return True
        _try(cv, 20, make)


def _storage_tanks(cv: Canvas) -> None:
    """Groups of round tanks (white roofs, a crescent of shade) in a grid."""
    rng, (w, h) = cv.rng, cv.size
    for _ in range(_count(cv, 0.8, 2.0)):
        radius = rng.uniform(6, 15)
        rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        gap = radius * rng.uniform(2.3, 2.8)
        x0, y0 = rng.uniform(radius + 3, w - radius - 3 - gap * (cols - 1)), rng.uniform(radius + 3, h - radius - 3 - gap * (rows - 1))
        for r in range(rows):
            for c in range(cols):
                cx, cy = x0 + c * gap, y0 + r * gap
                box = [(cx - radius, cy - radius), (cx + radius, cy + radius)]
                if not cv.free(box, 2) or cv.water[int(cy), int(cx)] or cv.road[int(cy), int(cx)]:
                    continue
                draw = ImageDraw.Draw(cv.image)
                draw.ellipse([(cx - radius + 2, cy - radius + 1.5), (cx + radius + 2, cy + radius + 1.5)], fill=(32, 36, 32))
                draw.ellipse(box, fill=_jitter((214, 214, 208), rng, 10))
                draw.ellipse([(cx - radius * 0.8, cy - radius * 0.8), (cx + radius * 0.55, cy + radius * 0.55)],
                             fill=_jitter((186, 186, 182), rng, 8))
                ImageDraw.Draw(cv.labels).ellipse(box, fill=CLASS_ID["storage_tank"])
                cv.claim(box, 2)


def _plane(cv: Canvas, x0: float, y0: float, aw: float, ah: float) -> bool:
    """One plane (fuselage, swept wings, tail) somewhere on the apron [x0, x0+aw) × [y0, y0+ah)."""
    rng = cv.rng
    length = rng.uniform(28, 56)
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(x0 + length / 2, x0 + aw - length / 2), rng.uniform(y0 + length / 2, y0 + ah - length / 2)
    fuselage = _rect(length, length * 0.11)
    wing = [(length * 0.12, -length * 0.47), (length * 0.2, -length * 0.47), (length * 0.22, length * 0.47),
            (length * 0.12, length * 0.47), (-length * 0.12, length * 0.05), (-length * 0.12, -length * 0.05)]
    wing = [(length * 0.16 - (x - length * 0.16), y) for x, y in wing]
    tail = [(-length * 0.5, -length * 0.17), (-length * 0.42, -length * 0.17), (-length * 0.34, 0),
            (-length * 0.42, length * 0.17), (-length * 0.5, length * 0.17)]
    parts = [_rotate(p, angle, cx, cy) for p in (fuselage, wing, tail)]
    outline = [pt for p in parts for pt in p]
    if not cv.free(outline, 2):
        return False
    colour = _jitter((232, 232, 236), rng, 10)
    for p in parts:
        cv.shadow(p, 3.0)
    for p in parts:
        cv.paint(p, colour, "plane")
    cv.claim(outline, 2)
    return True


def _apron(cv: Canvas) -> bool:
    """A concrete apron (background) on dry land with one to three planes parked on it."""
    rng, (w, h) = cv.rng, cv.size
    aw, ah = min(rng.uniform(90, 170), w - 1), min(rng.uniform(80, 140), h - 1)
    x0, y0 = rng.uniform(0, w - aw), rng.uniform(0, h - ah)
    apron = [(x0, y0), (x0 + aw, y0), (x0 + aw, y0 + ah), (x0, y0 + ah)]
    if not cv.free(apron, 2) or cv.water[int(y0):int(y0 + ah), int(x0):int(x0 + aw)].any():
        return False
    cv.paint(apron, _jitter((172, 170, 164), rng, 8))
    for _ in range(int(rng.integers(1, 4))):
        _try(cv, 15, lambda: _plane(cv, x0, y0, aw, ah))
    cv.claim(apron, 1)
    return True


def _planes(cv: Canvas) -> None:
    for _ in range(_count(cv, 0.6, 1.3)):
        _try(cv, 8, lambda: _apron(cv))


def _houses_and_pools(cv: Canvas) -> None:
    """Houses (background distractors) on land; some get a swimming pool on a paved rim beside them."""
    rng, (w, h) = cv.rng, cv.size
    land = ~(cv.water | cv.road)
    for _ in range(_count(cv, 8, 20)):
        def make() -> bool:
            cx, cy, angle = rng.uniform(0, w), rng.uniform(0, h), float(rng.choice([0, math.pi / 2]) + rng.normal(0, 0.2))
            hl, hw = rng.uniform(14, 30), rng.uniform(10, 18)
            house = _rotate(_rect(hl, hw), angle, cx, cy)
            with_pool = rng.random() < 0.5
            pl, pw = rng.uniform(12, 22), rng.uniform(7, 11)
            off = hw / 2 + pw / 2 + 5
            pool = _rotate(_rect(pl, pw), angle, cx - math.sin(angle) * off, cy + math.cos(angle) * off)
            rim = _rotate(_rect(pl + 5, pw + 5), angle, cx - math.sin(angle) * off, cy + math.cos(angle) * off)
            footprint = house + (rim if with_pool else [])
            if not cv.free(footprint, 2, land):
                return False
            cv.shadow(house, 3.0)
            roof = ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))]
            cv.paint(house, _jitter(roof, rng))
            ridge = _rotate(_rect(hl, 1.2), angle, cx, cy)
            cv.paint(ridge, _jitter(roof, rng, 25))
            if with_pool:
                cv.paint(rim, _jitter((204, 198, 186), rng, 8))
                cv.paint(pool, _jitter((52, 172, 214), rng, 14), "swimming_pool")
                inner = _rotate(_rect(pl * 0.6, pw * 0.5), angle, cx - math.sin(angle) * off, cy + math.cos(angle) * off)
                cv.paint(inner, _jitter((96, 200, 232), rng, 10))
            cv.claim(footprint, 2)
            return True
        _try(cv, 10, make)


def _tennis_courts(cv: Canvas) -> None:
    rng, (w, h) = cv.rng, cv.size
    land = ~(cv.water | cv.road)
    for _ in range(_count(cv, 0.3, 1.0)):
        def make() -> bool:
            cx, cy, angle = rng.uniform(0, w), rng.uniform(0, h), float(rng.choice([0, math.pi / 2]) + rng.normal(0, 0.1))
            court = _rotate(_rect(48, 22), angle, cx, cy)
            surround = _rotate(_rect(58, 30), angle, cx, cy)
            if not cv.free(surround, 2, land):
                return False
            cv.paint(surround, _jitter((150, 70, 55), rng, 10))
            surface = (60, 122, 88) if rng.random() < 0.5 else (68, 92, 150)
            cv.paint(court, _jitter(surface, rng, 8), "tennis_court")
            draw = ImageDraw.Draw(cv.image)
            draw.line(court + [court[0]], fill=(235, 235, 235), width=1)
            draw.line(_rotate([(0, -11), (0, 11)], angle, cx, cy), fill=(235, 235, 235), width=1)
            cv.claim(surround, 2)
            return True
        _try(cv, 10, make)


def _trees(cv: Canvas) -> None:
    """Dark round tree crowns: background texture that is neither road nor object."""
    rng, (w, h) = cv.rng, cv.size
    draw = ImageDraw.Draw(cv.image)
    for _ in range(_count(cv, 30, 90)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2.5, 7)
        box = [(cx - r, cy - r), (cx + r, cy + r)]
        if cv.free(box, 0) and not cv.water[int(cy) % h, int(cx) % w] and not cv.road[int(cy) % h, int(cx) % w]:
            draw.ellipse(box, fill=_jitter((44, 70, 38), rng, 10))


def paint_scene(rng: np.random.Generator, width: int, height: int) -> Canvas:
    """Background, roads, then every kind of object and distractor, in a fixed order (the order is part of
    what a seed means: changing it changes every scene)."""
    cv = _background(rng, width, height)
    roads = _roads(cv)
    _parking_lots(cv)
    _planes(cv)
    _storage_tanks(cv)
    _tennis_courts(cv)
    _ships(cv)
    _road_vehicles(cv, roads)
    _houses_and_pools(cv)
    _trees(cv)
    return cv
