"""The synthetic world's layout: streets that vary, their contents, the traffic and the ego's drive.

Why it exists: a benchmark whose streets always look alike rewards memorising one layout (an
image-free per-voxel prior then beats a network). So every world draws its own street: a
centreline of straight pieces and arcs (curves of 25-150 m radius), one or two lanes each way,
sometimes a median, optional parking strips, sidewalks of varied width, verges, and blocks of
buildings, gardens, woods, fields or yards with fences, set back by varied distances; a world has
its own character (urban to rural) that weights those blocks. Most worlds have a cross street
(an intersection the ego drives through). The ego drives in one of its lanes with a slow lateral
drift and a small heading wobble, at 6-10 m/s.

Everything is an oriented box (centre, size, yaw about z) with a train-id class and an instance.
Static boxes are fixed; moving ones (traffic, riders, walking persons) follow a street's
centreline at a lateral offset, so they take the curves. World frame: z up, the road surface at
z = -1.73 (the LiDAR 1.73 m above it, as KITTI's), x/y such that the ego's LiDAR pose at the
sequence's first written frame is the identity (as KITTI's poses.txt starts at the identity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LIDAR_HEIGHT = 1.73  # metres above the road, as KITTI's Velodyne
GROUND_Z = -LIDAR_HEIGHT
FRAME_PERIOD = 0.1  # s (10 Hz)

# train ids used below (see monoocc_ros.classes.CLASS_NAMES)
CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE, PERSON, BICYCLIST, MOTORCYCLIST = 1, 2, 3, 4, 5, 6, 7, 8
ROAD, PARKING, SIDEWALK, OTHER_GROUND, BUILDING, FENCE, VEGETATION, TRUNK, TERRAIN, POLE, SIGN = range(9, 20)

# Per-class base colours (RGB 0..1) to draw an instance colour from; several classes share
# similar greys/greens on purpose, so that class is not a function of colour.
PALETTES: dict[int, list[tuple[float, float, float]]] = {
    CAR: [(0.7, 0.1, 0.1), (0.1, 0.2, 0.6), (0.8, 0.8, 0.8), (0.15, 0.15, 0.15), (0.5, 0.5, 0.55), (0.2, 0.4, 0.3)],
    BICYCLE: [(0.1, 0.1, 0.1), (0.6, 0.1, 0.1), (0.2, 0.3, 0.6)],
    MOTORCYCLE: [(0.1, 0.1, 0.1), (0.7, 0.4, 0.0), (0.4, 0.4, 0.45)],
    TRUCK: [(0.9, 0.9, 0.9), (0.3, 0.35, 0.5), (0.6, 0.2, 0.1)],
    OTHER_VEHICLE: [(0.9, 0.8, 0.2), (0.85, 0.85, 0.85), (0.2, 0.5, 0.3)],
    PERSON: [(0.2, 0.2, 0.3), (0.5, 0.3, 0.2), (0.7, 0.1, 0.2), (0.3, 0.4, 0.2)],
    BICYCLIST: [(0.2, 0.2, 0.3), (0.8, 0.5, 0.1), (0.2, 0.4, 0.7)],
    MOTORCYCLIST: [(0.1, 0.1, 0.1), (0.5, 0.1, 0.1)],
    ROAD: [(0.27, 0.27, 0.28), (0.32, 0.31, 0.3)],
    PARKING: [(0.38, 0.37, 0.36), (0.3, 0.3, 0.32)],
    SIDEWALK: [(0.55, 0.53, 0.5), (0.6, 0.58, 0.56), (0.5, 0.45, 0.42)],
    OTHER_GROUND: [(0.45, 0.42, 0.36), (0.5, 0.5, 0.48)],
    BUILDING: [(0.75, 0.68, 0.55), (0.6, 0.3, 0.25), (0.55, 0.55, 0.58), (0.85, 0.82, 0.75), (0.45, 0.4, 0.35)],
    FENCE: [(0.5, 0.5, 0.5), (0.45, 0.3, 0.18), (0.25, 0.35, 0.25)],
    VEGETATION: [(0.15, 0.4, 0.12), (0.25, 0.45, 0.15), (0.1, 0.3, 0.1)],
    TRUNK: [(0.35, 0.22, 0.12), (0.3, 0.25, 0.2)],
    TERRAIN: [(0.45, 0.5, 0.25), (0.5, 0.45, 0.3), (0.35, 0.45, 0.2)],
    POLE: [(0.5, 0.5, 0.52), (0.3, 0.3, 0.3)],
    SIGN: [(0.8, 0.1, 0.1), (0.1, 0.3, 0.8), (0.9, 0.9, 0.9), (0.9, 0.7, 0.1)],
}
MARKING_COLOR = (0.9, 0.9, 0.88)
PIECE = 4.0  # m: ground strips are laid in pieces this long along a street (6.7 cm sagitta at 30 m)


@dataclass
class Street:
    """A centreline sampled every `step` metres: points (N, 2), heading (N,) radians, arc
    length s (N,) starting at `s[0]` (may be negative: the street starts behind the ego)."""

    points: np.ndarray
    heading: np.ndarray
    s: np.ndarray

    def at(self, s: np.ndarray | float, d: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Position (..., 2) at arc length `s` and lateral offset `d` (left positive), heading (...)."""
        s = np.asarray(s, np.float64)
        x = np.interp(s, self.s, self.points[:, 0])
        y = np.interp(s, self.s, self.points[:, 1])
        h = np.interp(s, self.s, np.unwrap(self.heading))
        d = np.asarray(d, np.float64)
        return np.stack([x - np.sin(h) * d, y + np.cos(h) * d], -1), h

    def curvature(self, s: float) -> float:
        h = np.unwrap(self.heading)
        return float(np.interp(s, self.s[1:], np.diff(h) / np.diff(self.s)))


@dataclass
class Boxes:
    """N oriented boxes: `center` (N, 3) and `yaw` (N,) at t = 0, `size` (N, 3) length (along
    yaw), width, height; `label` train id, `instance` id, `color` (N, 3) RGB 0..1. A box with a
    `track` index >= 0 moves along `tracks[i]` (a street, start s, offset d, speed m/s)."""

    center: np.ndarray
    size: np.ndarray
    yaw: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    color: np.ndarray
    track: np.ndarray
    tracks: list[tuple[Street, float, float, float, np.ndarray]] = field(default_factory=list)

    @property
    def moving(self) -> np.ndarray:
        return self.track >= 0

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(centre (N, 3), yaw (N,)) at time `t`: moving boxes advanced along their track."""
        center, yaw = self.center.copy(), self.yaw.copy()
        for i, (street, s0, d, speed, local) in enumerate(self.tracks):
            rows = np.flatnonzero(self.track == i)
            xy, h = street.at(s0 + speed * t, d)
            back = np.pi if speed < 0 else 0.0
            c, s_ = np.cos(h + back), np.sin(h + back)
            # `local` (k, 2): each box's offset in the track's moving frame (rider above bike).
            center[rows, 0] = xy[0] + c * local[:, 0] - s_ * local[:, 1]
            center[rows, 1] = xy[1] + s_ * local[:, 0] + c * local[:, 1]
            yaw[rows] = h + back
        return center, yaw

    def transformed(self, rot: float, shift: np.ndarray) -> Boxes:
        """The same boxes in a frame rotated by `rot` about z and shifted by `shift` (2,)."""
        c, s = np.cos(rot), np.sin(rot)
        center = self.center.copy()
        center[:, :2] = self.center[:, :2] @ np.array([[c, s], [-s, c]]) + shift
        tracks = [(_transform_street(st, rot, shift), s0, d, v, loc) for st, s0, d, v, loc in self.tracks]
        return Boxes(center, self.size, self.yaw + rot, self.label, self.instance, self.color, self.track, tracks)


def _transform_street(street: Street, rot: float, shift: np.ndarray) -> Street:
    c, s = np.cos(rot), np.sin(rot)
    return Street(street.points @ np.array([[c, s], [-s, c]]) + shift, street.heading + rot, street.s)


def make_centreline(rng: np.random.Generator, s_start: float, s_end: float, step: float = 1.0) -> Street:
    """Straight pieces and arcs of 25-150 m radius turning up to 90 degrees, starting along +x."""
    s = np.arange(s_start, s_end + step, step)
    curvature = np.zeros_like(s)
    pos = s_start + rng.uniform(0, 40)
    while pos < s_end:
        straight = rng.uniform(10, 60)
        pos += straight
        if rng.random() < 0.75:
            radius = rng.uniform(25, 150)
            turn = np.deg2rad(rng.uniform(15, 90))
            length = radius * turn
            curvature[(s >= pos) & (s < pos + length)] = rng.choice([-1, 1]) / radius
            pos += length
    heading = np.concatenate([[0.0], np.cumsum(curvature[:-1] * step)])
    points = np.zeros((len(s), 2))
    points[1:, 0] = np.cumsum(np.cos(heading[:-1]) * step)
    points[1:, 1] = np.cumsum(np.sin(heading[:-1]) * step)
    return Street(points, heading, s)


@dataclass
class Trajectory:
    """The ego's LiDAR poses (N, 4, 4) in the world frame and the times (N,) of each; the
    first `written` are the sequence's frames, the rest only feed the label accumulation (as
    SemanticKITTI's labels use scans before and after a frame)."""

    poses: np.ndarray
    times: np.ndarray
    written: int
    first: int  # index of the first written frame in `poses`


class _WorldBuilder:
    """Collects boxes; `add_on(street, s, d, ...)` places a box at a street position."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: list[tuple] = []
        self.tracks: list[tuple[Street, float, float, float, np.ndarray]] = []

    def add(self, center, size, yaw: float, label: int, *, instance=None, track=-1, color=None) -> int:
        inst = len(self.rows) + 1 if instance is None else instance
        if color is None:
            base = np.array(PALETTES[label][self.rng.integers(len(PALETTES[label]))])
            color = np.clip(base * self.rng.uniform(0.8, 1.2, 3), 0.02, 1.0)
        self.rows.append((tuple(center), tuple(size), yaw, label, inst, tuple(color), track))
        return inst

    def add_on(self, street: Street, s: float, d: float, z0: float, size, label: int, **kw) -> int:
        """A box standing at z0 with its length along the street at (s, d)."""
        xy, h = street.at(s, d)
        center = (xy[0], xy[1], z0 + size[2] / 2)
        return self.add(center, size, float(h), label, **kw)

    def add_moving(self, street: Street, s0: float, d: float, speed: float, parts, label: int) -> None:
        """Boxes moving together along `street` (one instance): parts = [(dx, dy, z0, size), ...]."""
        self.tracks.append((street, s0, d, speed, np.array([(p[0], p[1]) for p in parts], np.float64)))
        k = len(self.tracks) - 1
        inst = None
        for dx, dy, z0, size in parts:
            xy, h = street.at(s0 + dx, d + dy)
            inst = self.add((xy[0], xy[1], z0 + size[2] / 2), size, float(h), label, instance=inst, track=k)

    def build(self) -> Boxes:
        c, sz, yaw, lab, inst, col, tr = zip(*self.rows, strict=True)
        return Boxes(
            np.asarray(c, np.float64),
            np.asarray(sz, np.float64),
            np.asarray(yaw, np.float64),
            np.asarray(lab, np.int64),
            np.asarray(inst, np.int64),
            np.asarray(col, np.float64),
            np.asarray(tr, np.int64),
            list(self.tracks),
        )


@dataclass(frozen=True)
class Profile:
    """A street's cross-section: lanes per direction, their width, a median (0: a dashed centre
    line instead), and per side (right, left) the widths of parking, sidewalk and verge."""

    lanes: int
    lane_width: float
    median: float
    parking: tuple[float, float]
    walk: tuple[float, float]
    verge: tuple[float, float]

    @property
    def half(self) -> float:
        """Distance from the centreline to the road's edge."""
        return self.lanes * self.lane_width + self.median / 2

    def edges(self, side: int) -> tuple[float, float, float, float]:
        """Unsigned offsets where parking, sidewalk, verge and plots begin on a side (0 right, 1 left)."""
        e0 = self.half
        e1 = e0 + self.parking[side]
        e2 = e1 + self.walk[side]
        return e0, e1, e2, e2 + self.verge[side]


def draw_profile(rng: np.random.Generator, character: float) -> Profile:
    """A random cross-section; `character` 0 (rural) .. 1 (urban) favours sidewalks and parking."""
    lanes = 2 if rng.random() < 0.3 else 1
    median = rng.uniform(1.0, 3.0) if lanes == 2 and rng.random() < 0.5 else 0.0

    def side() -> tuple[float, float, float]:
        park = rng.uniform(2.0, 2.8) if rng.random() < 0.3 + 0.5 * character else 0.0
        walk = rng.uniform(1.5, 4.5) if rng.random() < 0.45 + 0.5 * character else 0.0
        verge = rng.uniform(0.5, 4.0) if rng.random() < 0.8 - 0.4 * character else 0.0
        return park, walk, verge

    (pr, wr, vr), (pl, wl, vl) = side(), side()
    return Profile(lanes, rng.uniform(3.0, 3.8), median, (pr, pl), (wr, wl), (vr, vl))


# Plot kinds beyond the verge and their weights from rural (character 0) to urban (1).
_PLOTS = ("building", "garden", "woods", "field", "yard")
_PLOT_RURAL = np.array([0.25, 0.28, 0.3, 0.1, 0.07])
_PLOT_URBAN = np.array([0.7, 0.15, 0.05, 0.03, 0.07])
CURB = 0.15  # m: sidewalks and medians stand this high above the road


class StreetLayer:
    """Lays one street's ground bands, plots, furniture, parked vehicles and pedestrians."""

    def __init__(self, b: _WorldBuilder, street: Street, profile: Profile, character: float, density: float) -> None:
        self.b, self.rng, self.street, self.p = b, b.rng, street, profile
        self.character, self.density = character, density
        self.g = GROUND_Z

    def strip(self, s0: float, s1: float, d0: float, d1: float, top: float, label: int, **kw) -> None:
        """A ground strip between offsets d0 < d1 from s0 to s1, top at `top`, in PIECE pieces;
        pieces are lengthened on the outside of curves so that no gap opens between them."""
        s = s0
        while s < s1 - 1e-6:
            e = min(s + PIECE, s1)
            mid = (s + e) / 2
            stretch = 1 + abs(self.street.curvature(mid)) * max(abs(d0), abs(d1))
            length = (e - s) * stretch + 0.05
            thick = top - (self.g - 0.05)  # a thin slab: the ground occupies one voxel layer
            self.b.add_on(self.street, mid, (d0 + d1) / 2, self.g - 0.05, (length, d1 - d0, thick), label, **kw)
            s = e

    def lay_ground(self, s0: float, s1: float, gaps: list[tuple[float, float]]) -> None:
        p, g = self.p, self.g
        self.strip(s0, s1, -p.half, p.half, g, ROAD)
        if p.median:
            for a, c in _cut(s0, s1, gaps):
                self.strip(a, c, -p.median / 2, p.median / 2, g + CURB, OTHER_GROUND)
        for side, sign in ((0, -1), (1, 1)):
            e0, e1, e2, e3 = p.edges(side)
            for a, c in _cut(s0, s1, gaps):
                if p.parking[side]:
                    x = a
                    while x < c:
                        seg = min(self.rng.uniform(12, 40), c - x)
                        kind = ROAD if self.rng.random() < 0.3 else PARKING
                        self._band(x, x + seg, sign, e0, e1, g, kind)
                        x += seg
                if p.walk[side]:
                    self._band(a, c, sign, e1, e2, g + CURB, SIDEWALK)
                if p.verge[side]:
                    kind = int(self.rng.choice([TERRAIN, TERRAIN, OTHER_GROUND, VEGETATION]))
                    self._band(a, c, sign, e2, e3, g + (0.4 if kind == VEGETATION else 0.08), kind)
        self._markings(s0, s1, gaps)

    def _band(self, s0: float, s1: float, sign: int, near: float, far: float, top: float, label: int) -> None:
        d0, d1 = sorted((sign * near, sign * far))
        self.strip(s0, s1, d0, d1, top, label)

    def _markings(self, s0: float, s1: float, gaps: list[tuple[float, float]]) -> None:
        """Dashed white lines (road class: paint is road in SemanticKITTI) between lanes."""
        p = self.p
        lines = [k * p.lane_width + p.median / 2 for k in range(1, p.lanes)]
        lines = [-x for x in lines] + lines + ([] if p.median else [0.0])
        for a, c in _cut(s0, s1, gaps):
            x = a + self.rng.uniform(0, 6)
            while x + 3 < c:
                for d in lines:
                    self.b.add_on(self.street, x + 1.5, d, self.g - 0.05, (3.0, 0.12, 0.06), ROAD, color=MARKING_COLOR)
                x += 6.0

    def lay_plots(self, s0: float, s1: float, gaps: list[tuple[float, float]], reach: float = 30.0) -> None:
        """Blocks beyond each verge, out to `reach` metres beyond the plot line."""
        weights = (1 - self.character) * _PLOT_RURAL + self.character * _PLOT_URBAN
        for side, sign in ((0, -1), (1, 1)):
            e3 = self.p.edges(side)[3]
            for a, c in _cut(s0, s1, gaps):
                x = a
                while x < c - 2:
                    seg = min(self.rng.uniform(8, 35), c - x)
                    kind = _PLOTS[self.rng.choice(len(_PLOTS), p=weights / weights.sum())]
                    self._plot(kind, x, x + seg, sign, e3, e3 + reach)
                    x += seg

    def _plot(self, kind: str, s0: float, s1: float, sign: int, near: float, far: float) -> None:
        rng, g, seg = self.rng, self.g, s1 - s0
        setback = rng.uniform(0.5, 5.0) if kind == "building" else rng.uniform(0.5, 8.0)
        ground = OTHER_GROUND if kind == "yard" or (kind == "building" and rng.random() < 0.3) else TERRAIN
        self._band(s0, s1, sign, near, far, g + 0.08, ground)
        fence_p = {"building": 0.45, "garden": 0.8, "woods": 0.4, "field": 0.85, "yard": 0.9}[kind]
        if rng.random() < fence_p:
            d = sign * (near + min(setback, rng.uniform(0.2, 1.0)))
            h = rng.uniform(1.0, 2.5)
            self.b.add_on(self.street, (s0 + s1) / 2, d, g, (seg - 0.3, 0.12, h), FENCE)
        b0 = near + setback
        if kind == "building":
            depth = rng.uniform(8, 20)
            h = rng.uniform(5, 18)
            self._box_band(s0 + 0.4, s1 - 0.4, sign, b0, b0 + depth, g - 0.6, h + 0.6, BUILDING)
            if rng.random() < 0.4:  # a hedge or bushes in front
                self._box_band(s0 + 0.5, s1 - 0.5, sign, near + 0.2, near + 1.2, g, rng.uniform(0.8, 1.6), VEGETATION)
        elif kind == "garden":
            self._box_band(s0 + 0.3, s1 - 0.3, sign, b0, b0 + rng.uniform(1, 3), g, rng.uniform(1.0, 2.5), VEGETATION)
            self._trees(s0, s1, sign, b0 + 3, b0 + 15, rng.uniform(6, 12))
            if rng.random() < 0.7:
                depth = rng.uniform(7, 12)
                self._box_band(s0 + 2, s1 - 2, sign, b0 + 8, b0 + 8 + depth, g - 0.6, rng.uniform(4, 9), BUILDING)
        elif kind == "woods":
            self._trees(s0, s1, sign, b0, far, rng.uniform(3, 6))
            self._box_band(s0, s1, sign, b0, far, g, rng.uniform(0.5, 1.5), VEGETATION)  # undergrowth
        elif kind == "field":
            if rng.random() < 0.4:
                self._trees(s0, s1, sign, b0, b0 + 4, rng.uniform(8, 15))
        else:  # yard: other ground with a shed and parked vehicles
            if rng.random() < 0.6:
                depth = rng.uniform(5, 10)
                self._box_band(s0 + 1, s1 - 1, sign, b0 + 6, b0 + 6 + depth, g - 0.6, rng.uniform(3.5, 7), BUILDING)
            if seg > 8 and rng.random() < 0.6:
                cls = int(rng.choice([TRUCK, OTHER_VEHICLE, CAR, CAR]))
                size = _vehicle_size(rng, cls)
                self.b.add_on(self.street, (s0 + s1) / 2, sign * (b0 + 2), g, size, cls)

    def _box_band(self, s0: float, s1: float, sign: int, near: float, far: float, z0: float, h: float, label: int):
        d0, d1 = sorted((sign * near, sign * far))
        if s1 - s0 > 0.5:
            self.b.add_on(self.street, (s0 + s1) / 2, (d0 + d1) / 2, z0, (s1 - s0, d1 - d0, h), label)

    def _trees(self, s0: float, s1: float, sign: int, near: float, far: float, spacing: float) -> None:
        x = s0 + self.rng.uniform(0, spacing)
        while x < s1:
            d = sign * self.rng.uniform(near, max(near, far))
            self.tree(x, d)
            x += spacing * self.rng.uniform(0.6, 1.4)

    def tree(self, s: float, d: float, z0: float | None = None) -> None:
        rng, g = self.rng, self.g if z0 is None else z0
        t, h = rng.uniform(0.25, 0.5), rng.uniform(1.8, 3.5)
        self.b.add_on(self.street, s, d, g, (t, t, h + 0.4), TRUNK)
        c = rng.uniform(2.0, 5.0)
        self.b.add_on(self.street, s, d, g + h, (c, c * rng.uniform(0.8, 1.2), rng.uniform(2, 5)), VEGETATION)

    def lay_furniture(self, s0: float, s1: float, gaps: list[tuple[float, float]]) -> None:
        """Trees, poles with signs, parked two-wheelers and bushes on sidewalks (or verges)."""
        rng, g = self.rng, self.g
        for side, sign in ((0, -1), (1, 1)):
            _e0, e1, e2, e3 = self.p.edges(side)
            if e3 - e1 < 0.6:  # no sidewalk and no verge: poles and signs at the road edge only
                e2 = e3 = e1 + 0.6
            top = g + (CURB if self.p.walk[side] else 0.0)
            for a, c in _cut(s0, s1, gaps):
                x = a + rng.uniform(0, 8)
                while x < c:
                    r = rng.random()
                    furn = sign * (max(e2, e1 + 0.6) - 0.4)
                    if r < 0.35:
                        self.tree(x, furn, top)
                    elif r < 0.65:
                        self.b.add_on(self.street, x, furn, top, (0.16, 0.16, rng.uniform(3.0, 5.5)), POLE)
                        if rng.random() < 0.75:
                            sh = rng.uniform(2.0, 3.0)
                            w = rng.uniform(0.5, 0.9)
                            self.b.add_on(self.street, x, furn - sign * 0.3, top + sh, (0.08, w, w), SIGN)
                    elif r < 0.85:
                        cls = BICYCLE if rng.random() < 0.55 else MOTORCYCLE
                        ln, wd, ht = (1.75, 0.5, 1.05) if cls == BICYCLE else (2.1, 0.8, 1.2)
                        d = sign * (e1 + 0.6)
                        self.b.add_on(self.street, x, d, top, (ln, wd, ht), cls)
                    else:
                        s = rng.uniform(0.8, 2.0)
                        self.b.add_on(self.street, x, furn, top, (s, s, rng.uniform(0.6, 1.4)), VEGETATION)
                    x += rng.uniform(5, 16) / self.density

    def lay_people(self, s0: float, s1: float, gaps: list[tuple[float, float]]) -> None:
        """Pedestrians standing or walking on sidewalks (or verges)."""
        rng, g = self.rng, self.g
        for side, sign in ((0, -1), (1, 1)):
            _e0, e1, e2, e3 = self.p.edges(side)
            near, far = (e1, e2) if self.p.walk[side] else (e2, max(e3, e2 + 1.0))
            top = g + (CURB if self.p.walk[side] else 0.0)
            for a, c in _cut(s0, s1, gaps):
                for _ in range(rng.poisson((c - a) / 25 * self.density)):
                    s, d = rng.uniform(a, c), sign * rng.uniform(near + 0.3, max(near + 0.3, far - 0.3))
                    size = (0.5, 0.55, rng.uniform(1.55, 1.9))
                    if rng.random() < 0.5:
                        self.b.add_on(self.street, s, d, top, size, PERSON)
                    else:
                        v = rng.uniform(0.8, 1.6) * rng.choice([-1, 1])
                        self.b.add_moving(self.street, s, d, v, [(0.0, 0.0, top, size)], PERSON)

    def lay_parked(self, s0: float, s1: float, gaps: list[tuple[float, float]]) -> None:
        """Parked vehicles along each side's parking strip (or the road edge without one)."""
        rng, g = self.rng, self.g
        for side, sign in ((0, -1), (1, 1)):
            e0, _e1 = self.p.edges(side)[:2]
            if not self.p.parking[side] and rng.random() < 0.6:
                continue
            width = self.p.parking[side] or 2.2
            d = sign * (e0 + width / 2) if self.p.parking[side] else sign * (e0 - 1.1)
            if not self.p.parking[side] and self.p.lanes == 1 and side == 0:
                continue  # no parking inside the ego's only lane
            for a, c in _cut(s0, s1, gaps):
                x = a + rng.uniform(0, 5)
                while x < c - 4:
                    r = rng.random()
                    cls = CAR if r < 0.88 else TRUCK if r < 0.94 else OTHER_VEHICLE
                    size = _vehicle_size(rng, cls)
                    self.b.add_on(self.street, x + size[0] / 2, d + rng.uniform(-0.15, 0.15), g, size, cls)
                    x += size[0] + rng.uniform(0.8, 14.0) / self.density


def _vehicle_size(rng: np.random.Generator, cls: int) -> tuple[float, float, float]:
    if cls == CAR:
        return rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.6)
    if cls == TRUCK:
        return rng.uniform(6, 9), 2.4, rng.uniform(2.8, 3.4)
    return rng.uniform(5, 8), rng.uniform(2.0, 2.4), rng.uniform(2.2, 2.8)  # vans, minibuses, trailers


def _cut(s0: float, s1: float, gaps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """[s0, s1] minus the `gaps` intervals."""
    out, a = [], s0
    for lo, hi in sorted(gaps):
        if hi <= a or lo >= s1:
            continue
        if lo > a:
            out.append((a, lo))
        a = max(a, hi)
    if a < s1:
        out.append((a, s1))
    return out


def _lay_traffic(b: _WorldBuilder, street: Street, p: Profile, s0: float, s1: float, ego_s0: float) -> None:
    """Oncoming cars/trucks/buses in the left lanes, faster cars ahead in the right lanes (they
    pull away from the ego, 6-10 m/s), and bicyclists/motorcyclists along both road edges."""
    rng, g = b.rng, GROUND_Z
    span = s1 - s0
    for _ in range(rng.poisson(span / 25) + 2):
        r = rng.random()
        cls = CAR if r < 0.84 else OTHER_VEHICLE if r < 0.9 else TRUCK
        lane = rng.integers(p.lanes)
        d = p.median / 2 + (lane + 0.5) * p.lane_width + rng.uniform(-0.3, 0.3)
        b.add_moving(
            street, rng.uniform(s0, s1 + 60), d, -rng.uniform(6, 12), [(0, 0, g, _vehicle_size(rng, cls))], cls
        )
    for _ in range(rng.poisson(span / 60) + 1):
        lane = rng.integers(p.lanes)
        d = -(p.median / 2 + (lane + 0.5) * p.lane_width)
        cls = CAR if rng.random() < 0.85 else OTHER_VEHICLE
        start = rng.uniform(ego_s0 + 12, max(ego_s0 + 13, s1))
        b.add_moving(street, start, d, rng.uniform(11, 14), [(0, 0, g, _vehicle_size(rng, cls))], cls)
    for _ in range(rng.poisson(span / 45) + 1):
        add_rider(b, street, p, rng.uniform(s0, s1), side=int(rng.random() < 0.4))


def add_rider(b: _WorldBuilder, street: Street, p: Profile, s: float, side: int, cls: int | None = None) -> None:
    """A bicyclist or motorcyclist (vehicle + upper body, one instance) riding along a road edge."""
    rng, g = b.rng, GROUND_Z
    cls = cls if cls is not None else (BICYCLIST if rng.random() < 0.65 else MOTORCYCLIST)
    ln, ht = (1.75, 1.05) if cls == BICYCLIST else (2.1, 1.15)
    speed = rng.uniform(3, 6) if cls == BICYCLIST else rng.uniform(6, 11)
    d = p.half - 0.55
    if side == 0:
        d = -d
    else:
        speed = -speed
    parts = [(0.0, 0.0, g, (ln, 0.6, ht)), (0.1, 0.0, g + ht, (0.55, 0.5, 0.75))]
    b.add_moving(street, s, d, speed, parts, cls)


def _ego_drive(rng: np.random.Generator, street: Street, p: Profile, frames: int, before: int, after: int):
    """The ego's LiDAR poses (N, 4, 4) along `street` in one of its right lanes, and times (N,)."""
    n = before + frames + after
    t = (np.arange(n) - before) * FRAME_PERIOD
    base, wobble = rng.uniform(6.5, 9.5), rng.uniform(0, 1.0)
    speed = np.clip(base + wobble * np.sin(2 * np.pi * t / rng.uniform(6, 15) + rng.uniform(0, 6.3)), 6.0, 10.0)
    s = np.concatenate([[0.0], np.cumsum(speed[:-1] * FRAME_PERIOD)])
    s -= s[before]  # the first written frame at s = 0
    lane = rng.integers(p.lanes)
    centre = -(p.median / 2 + (lane + 0.5) * p.lane_width)
    amp, period = rng.uniform(0, 0.35), rng.uniform(8, 20)
    d = centre + amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3))
    xy, heading = street.at(s, d)
    drift = np.gradient(d, s) if n > 1 else np.zeros(n)
    yaw = heading + np.arctan(drift) + np.deg2rad(rng.uniform(0, 1.5)) * np.sin(2 * np.pi * t / rng.uniform(3, 9))
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 0, 0], poses[:, 0, 1] = np.cos(yaw), -np.sin(yaw)
    poses[:, 1, 0], poses[:, 1, 1] = np.sin(yaw), np.cos(yaw)
    poses[:, :2, 3] = xy
    return poses, t, s


# Classes every world shows near its drive, so every benchmark split has every class.
_REQUIRED = (BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE, PERSON, BICYCLIST, MOTORCYCLIST, POLE, SIGN, TRUNK,
             OTHER_GROUND, PARKING, FENCE)  # fmt: skip


def _ensure_classes(layer: StreetLayer, b: _WorldBuilder, lo: float, hi: float, drive: np.ndarray) -> None:
    """Adds one instance, close to the ego's path, of each required class the world lacks within
    30 m of the drive's positions `drive` (N, 2) (moving boxes counted where they start)."""
    rng, p, g = b.rng, layer.p, GROUND_Z
    centers = np.array([row[0][:2] for row in b.rows])
    labels = np.array([row[3] for row in b.rows])
    dist = np.min(np.linalg.norm(centers[:, None] - drive[None, ::5], axis=2), axis=1)
    have = set(labels[dist < 30].tolist())
    for cls in _REQUIRED:
        if cls in have:
            continue
        s = rng.uniform(lo, hi)
        side, sign = (0, -1) if rng.random() < 0.6 else (1, 1)
        e0, e1, e2, e3 = p.edges(side)
        edge = sign * (e0 + 0.6)
        if cls in (BICYCLIST, MOTORCYCLIST):
            add_rider(b, layer.street, p, s, side, cls)
        elif cls in (BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE):
            size = (1.75, 0.5, 1.05) if cls == BICYCLE else (2.1, 0.8, 1.2) if cls == MOTORCYCLE else None
            size = size or _vehicle_size(rng, cls)
            b.add_on(layer.street, s, sign * (e0 + size[1] / 2 + 0.3), g + 0.02, size, cls)
        elif cls == PERSON:
            b.add_on(layer.street, s, sign * (e1 + 0.8), g + 0.02, (0.5, 0.55, 1.75), PERSON)
        elif cls in (POLE, SIGN):
            b.add_on(layer.street, s, edge, g, (0.16, 0.16, 4.0), POLE)
            b.add_on(layer.street, s, edge + sign * 0.3, g + 2.3, (0.08, 0.7, 0.7), SIGN)
        elif cls == TRUNK:
            layer.tree(s, sign * max(e2, e0 + 1.0))
        elif cls == FENCE:
            b.add_on(layer.street, s, sign * (e3 + 0.3), g, (rng.uniform(8, 20), 0.12, 1.5), FENCE)
        else:  # a driveway (other ground) or a parking bay across the kerb, slightly raised
            top = g + CURB + 0.03
            b.add_on(
                layer.street, s, sign * (e0 + (e3 - e0) / 2 + 0.5), g - 0.05, (6.0, e3 - e0 + 1, top - g + 0.05), cls
            )


@dataclass
class World:
    boxes: Boxes
    trajectory: Trajectory
    streets: list[Street]


def make_world(rng: np.random.Generator, frames: int, before: int = 30, after: int = 70) -> World:
    """A world with a drive of `frames` written frames (plus `before`/`after` poses for the
    labels' accumulation). Deterministic for a given generator state."""
    character = float(rng.beta(1.6, 1.2))  # leaning suburban, as KITTI's drives
    density = rng.uniform(0.6, 1.6)
    profile = draw_profile(rng, character)
    street = make_centreline(rng, -120.0, 60.0 + 1.1 * (frames + after) + 120.0)
    poses, times, ego_s = _ego_drive(rng, street, profile, frames, before, after)
    lo, hi = ego_s[0] - 60.0, ego_s[-1] + 90.0
    b = _WorldBuilder(rng)
    # A ground plane under everything, so that no ray falls through a seam between strips.
    b.add((0, 0, GROUND_Z - 0.28), (4000, 4000, 0.5), 0.0, TERRAIN)
    gaps: list[tuple[float, float]] = []
    crosses: list[tuple[float, float, Profile]] = []
    span_lo, span_hi = ego_s[before] + 5.0, ego_s[before + frames - 1] + 45.0
    for _ in range(int(rng.random() < 0.7) + int(rng.random() < 0.25)):
        s_x = rng.uniform(span_lo, span_hi)
        if any(abs(s_x - c[0]) < 40 for c in crosses):
            continue
        cross_profile = draw_profile(rng, character)
        angle = np.pi / 2 + np.deg2rad(rng.uniform(-20, 20))
        crosses.append((s_x, angle, cross_profile))
        reach = (cross_profile.edges(0)[3] + cross_profile.edges(1)[3]) / 2 / abs(np.sin(angle)) + 1.0
        gaps.append((s_x - reach, s_x + reach))
    main = StreetLayer(b, street, profile, character, density)
    main.lay_ground(lo, hi, gaps)
    main.lay_plots(lo, hi, gaps)
    main.lay_furniture(lo, hi, gaps)
    main.lay_people(lo, hi, gaps)
    main.lay_parked(lo, hi, gaps)
    streets = [street]
    for s_x, angle, cp in crosses:
        (px, py), h = street.at(s_x)
        phi = float(h) + angle
        t = np.arange(-100.0, 101.0)
        cross = Street(np.stack([px + t * np.cos(phi), py + t * np.sin(phi)], -1), np.full(len(t), phi), t)
        streets.append(cross)
        layer = StreetLayer(b, cross, cp, character, density)
        main_edge = max(profile.edges(0)[3], profile.edges(1)[3])
        near_gap = [(-profile.half - 0.3, profile.half + 0.3)]
        layer.lay_ground(-100, 100, near_gap)
        plot_gap = [(-main_edge - 31, main_edge + 31)]
        layer.lay_plots(-100, 100, plot_gap)
        side_gap = [(-profile.edges(0)[2] - 1, profile.edges(1)[2] + 1)]
        layer.lay_furniture(-100, 100, side_gap)
        layer.lay_people(-100, 100, side_gap)
        layer.lay_parked(-100, 100, side_gap)
    _lay_traffic(b, street, profile, lo, hi, 0.0)
    _ensure_classes(main, b, span_lo - 5.0, span_hi - 25.0, poses[before : before + frames, :2, 3])
    boxes = b.build()
    # Express everything in the LiDAR frame of the first written frame (KITTI poses start at I).
    ref = poses[before]
    rot = -np.arctan2(ref[1, 0], ref[0, 0])
    c, s = np.cos(rot), np.sin(rot)
    shift = -np.array([[c, -s], [s, c]]) @ ref[:2, 3]
    to_ref = np.eye(4)
    to_ref[:2, :2] = [[c, -s], [s, c]]
    to_ref[:2, 3] = shift
    traj = Trajectory(to_ref @ poses, times, frames, before)
    moved = [_transform_street(st, rot, shift) for st in streets]
    return World(boxes.transformed(rot, shift), traj, moved)
