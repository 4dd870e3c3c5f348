"""Render the demo's "production line" video: textile pieces indexed past a fixed camera.

The line is an indexing conveyor: a strip of square pieces, each as tall as the frame, moves
one piece to the left in ``move_frames`` frames (eased), then dwells for ``dwell_frames`` frames
with one piece centred under the camera. The frame is wider than tall, so the neighbours show at
the sides; the runtime's centre crop (shorter side, then centre square) sees the centred piece.
Inside that crop every pixel is textile (no belt or gap the normal set never showed); small cleat
marks at the joins sit in the top and bottom rows, outside it, so the motion shows.

The camera must see what the normal images showed: pieces are placed at their native size (the
frame height defaults to it) and the video is written losslessly (FFV1). Measured on the textile
set with efficientnet_lite0: resizing 250 -> 240 px doubles the normal scores, and MJPG video
(PSNR 40 dB) or Gaussian noise of sigma 2 raise them about six-fold, far above the threshold a
bundle fitted on the still images calibrates. A real line is fitted on its own camera's frames.

The join between two pieces is in view for the ``move_frames - 1`` = 2 frames of each index
move; no normal image shows a join, so those frames score far above the threshold, and the
watch loop's hysteresis (3 frames in a row to open an alert) is what keeps them from alerting.

Defective pieces (real defect images) are injected at seeded places. The ground truth of each is
the run of frames where it covers at least ``min_cover`` of the centre square (the part of the
frame the detector scores), plus the wider run where any of it is in that square.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from dn2.runtime.errors import Dn2Error


@dataclass(frozen=True)
class Piece:
    path: str
    kind: str  # "nominal" or the defect kind ("global", "local")


@dataclass
class LinePlan:
    """What the camera will see: the pieces on the strip and how the strip moves."""

    pieces: List[Piece]
    n_frames: int
    fps: float = 10.0
    height: int = 250  # piece side; the textile images are 250 x 250
    width: int = 500  # 2 x height: half of each neighbour shows, and the runtime's resize
    # (256 / 250) maps the frame to whole pixels, so a centred piece is resampled exactly as
    # its still image is (other widths shift the sampling phase, which moves scores ~30%)
    move_frames: int = 3  # a quick index: the hysteresis (3 frames) rides over the 2 join frames
    dwell_frames: int = 17
    seed: int = 0
    meta: Dict[str, object] = field(default_factory=dict)

    @property
    def cycle(self) -> int:
        return self.move_frames + self.dwell_frames


@dataclass(frozen=True)
class DefectRange:
    piece: int
    kind: str
    source: str
    start: int  # first frame with >= min_cover of the centre square showing the defect
    end: int  # last such frame (inclusive)
    visible_start: int  # first frame with any of it in the centre square
    visible_end: int  # last such frame (inclusive)


LEAD = 1  # pieces left of the first centred one, so the first frames have a left neighbour
DEFECT_GAP = 3  # cycles between two defect pieces: two normal pieces pass between them
CLEAT = 8  # rows of the belt's cleat marks at piece joins, top and bottom: outside the centre crop


def pieces_needed(n_frames: int, move_frames: int, dwell_frames: int) -> int:
    """Pieces on the strip for ``n_frames``: lead pieces, one per cycle, two trailing."""
    return n_frames // (move_frames + dwell_frames) + 3 + LEAD


def plan_line(
    nominal: Sequence[str],
    defects: Sequence[Piece],
    n_frames: int,
    n_defects: int = 5,
    seed: int = 0,
    **geometry,
) -> LinePlan:
    """Lay out a strip of held-out normal pieces with ``n_defects`` defect pieces injected.

    ``nominal``: paths of normal images (cycled if too few); ``defects``: candidate defect pieces,
    a seeded sample of which is injected. Defects land in distinct cycles, never next to each
    other and never in the first two or the last cycle, spread over the video.
    """
    plan = LinePlan(pieces=[], n_frames=int(n_frames), seed=int(seed), **geometry)
    if plan.move_frames < 1 or plan.dwell_frames < 1:
        raise Dn2Error(
            f"move_frames and dwell_frames must be >= 1, found "
            f"{plan.move_frames} and {plan.dwell_frames}"
        )
    if not nominal:
        raise Dn2Error("plan_line needs at least one normal image, found none")
    n_pieces = pieces_needed(plan.n_frames, plan.move_frames, plan.dwell_frames)
    full_cycles = plan.n_frames // plan.cycle  # cycles whose dwell is fully inside the video
    # piece c+1+LEAD is centred during cycle c; defects in cycles 2 .. full_cycles-2
    first, last = 2, full_cycles - 2
    slots = (last - first) // DEFECT_GAP + 1 if last >= first else 0  # positions DEFECT_GAP apart
    if n_defects > 0 and slots < n_defects:
        raise Dn2Error(
            f"cannot inject {n_defects} defects in {plan.n_frames} frames: room for "
            f"{max(slots, 0)} ({plan.cycle} frames per piece, {DEFECT_GAP} pieces "
            "apart); use more frames or fewer defects"
        )
    if n_defects > 0 and not defects:
        raise Dn2Error(f"cannot inject {n_defects} defects: no defect images given")
    rng = np.random.default_rng(seed)
    defect_cycles = _spread(first, last, n_defects, DEFECT_GAP, rng)
    chosen = [
        defects[i]
        for i in rng.choice(len(defects), size=n_defects, replace=len(defects) < n_defects)
    ]
    order = rng.permutation(len(nominal))
    pieces = [Piece(str(nominal[order[i % len(order)]]), "nominal") for i in range(n_pieces)]
    for cyc, piece in zip(defect_cycles, chosen):
        pieces[cyc + 1 + LEAD] = Piece(str(piece.path), piece.kind)
    plan.pieces = pieces
    return plan


def _spread(first: int, last: int, n: int, gap: int, rng: np.random.Generator) -> List[int]:
    """``n`` integers in [first, last], at least ``gap`` apart, one per equal stratum (seeded)."""
    if n <= 0:
        return []
    edges = np.linspace(first, last + 1, n + 1)
    for _ in range(200):
        out = [
            int(rng.integers(int(np.ceil(lo)), max(int(np.ceil(lo)), int(np.ceil(hi)) - 1) + 1))
            for lo, hi in zip(edges[:-1], edges[1:])
        ]
        if all(b - a >= gap for a, b in zip(out, out[1:])):
            return out
    return [int(round(x)) for x in np.linspace(first, last, n)]  # evenly spaced, always fits


def strip_shift(plan: LinePlan, t: int) -> float:
    """How many piece widths the strip has moved at frame ``t`` (at rest in cycle c: c + 1)."""
    c, r = divmod(int(t), plan.cycle)
    if r >= plan.move_frames:
        return float(c + 1)
    x = (r + 1) / plan.move_frames
    ease = x * x * (3.0 - 2.0 * x)  # smoothstep: the belt accelerates and brakes
    return c + ease


def piece_left_edges(plan: LinePlan, t: int) -> np.ndarray:
    """x of each piece's left edge in frame ``t`` (float pixels)."""
    side = plan.height
    centre_left = (plan.width - side) / 2.0
    idx = np.arange(len(plan.pieces), dtype=np.float64) - LEAD
    return centre_left + (idx - strip_shift(plan, t)) * side


def coverage(plan: LinePlan, t: int) -> np.ndarray:
    """Fraction of the centre square (side = frame height) that each piece covers at ``t``."""
    side = plan.height
    lo, hi = (plan.width - side) / 2.0, (plan.width + side) / 2.0
    left = piece_left_edges(plan, t)
    overlap = np.clip(np.minimum(left + side, hi) - np.maximum(left, lo), 0.0, None)
    return overlap / side


def ground_truth(plan: LinePlan, min_cover: float = 0.5) -> List[DefectRange]:
    """The frame ranges in which each injected defect piece is under the camera."""
    cov = np.stack([coverage(plan, t) for t in range(plan.n_frames)])  # [T, P]
    out = []
    for i, piece in enumerate(plan.pieces):
        if piece.kind == "nominal":
            continue
        strong = np.flatnonzero(cov[:, i] >= min_cover)
        seen = np.flatnonzero(cov[:, i] > 0.0)
        if strong.size == 0:
            continue
        out.append(
            DefectRange(
                piece=i,
                kind=piece.kind,
                source=piece.path,
                start=int(strong[0]),
                end=int(strong[-1]),
                visible_start=int(seen[0]),
                visible_end=int(seen[-1]),
            )
        )
    return out


class PieceImages:
    """Loads each piece image once, resized to the frame height (square)."""

    def __init__(self, side: int):
        self.side = int(side)
        self._cache: Dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray:
        img = self._cache.get(path)
        if img is None:
            import cv2

            src = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if src is None:
                raise Dn2Error(f"cannot read piece image {path}: expected a JPEG/PNG file")
            h, w = src.shape[:2]
            s = min(h, w)  # centre square of the source; resized only if not the frame height
            img = src[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
            if s != self.side:
                interp = cv2.INTER_AREA if s > self.side else cv2.INTER_CUBIC
                img = cv2.resize(img, (self.side, self.side), interpolation=interp)
            img = np.ascontiguousarray(img)
            self._cache[path] = img
        return img


def render_frame(plan: LinePlan, t: int, images: Optional[PieceImages] = None) -> np.ndarray:
    """Frame ``t`` of the line: BGR uint8 [height, width, 3]."""
    images = images or PieceImages(plan.height)
    side, width = plan.height, plan.width
    frame = np.zeros((side, width, 3), np.uint8)
    left = np.round(piece_left_edges(plan, t)).astype(int)
    for i in np.flatnonzero((left < width) & (left + side > 0)):
        x0, x1 = max(0, left[i]), min(width, left[i] + side)
        img = images.get(plan.pieces[i].path)
        frame[:, x0:x1] = img[:, x0 - left[i] : x1 - left[i]]
    for x in left[(left > 0) & (left < width)]:  # cleats mark the joins, so the motion shows
        frame[:CLEAT, max(0, x - 2) : x + 2] = (40, 40, 200)
        frame[-CLEAT:, max(0, x - 2) : x + 2] = (40, 40, 200)
    return frame


FOURCC = {".avi": "FFV1", ".mkv": "FFV1", ".mp4": "mp4v"}  # FFV1: lossless; mp4v: lossy


def open_writer(path: Path, fps: float, size: tuple, fourcc: Optional[str] = None):
    """An OpenCV VideoWriter for ``path``: by default lossless FFV1 in .avi / .mkv, lossy mp4v
    in .mp4; ``fourcc`` (e.g. "MJPG") overrides it."""
    import cv2

    fourcc = fourcc or FOURCC.get(path.suffix.lower())
    if fourcc is None:
        raise Dn2Error(
            f"video path {path}: expected a {', '.join(sorted(FOURCC))} suffix, "
            f"found {path.suffix or 'none'!r}"
        )
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), size)
    if not writer.isOpened():
        raise Dn2Error(
            f"OpenCV cannot write {fourcc} video to {path}; expected an OpenCV build "
            "with FFMPEG video I/O (opencv-python-headless has it)"
        )
    return writer


def render_video(
    plan: LinePlan,
    path,
    images: Optional[PieceImages] = None,
    fourcc: Optional[str] = None,
    sigma: float = 0.0,
) -> Path:
    """Write every frame of ``plan`` to ``path`` (.avi / .mkv lossless, .mp4 lossy, or the
    ``fourcc`` given) with independent Gaussian sensor noise of ``sigma`` levels per channel
    (seeded by the plan)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = images or PieceImages(plan.height)
    writer = open_writer(path, plan.fps, (plan.width, plan.height), fourcc)
    rng = np.random.default_rng(plan.seed)
    try:
        for t in range(plan.n_frames):
            f = render_frame(plan, t, images)
            if sigma:
                f = np.clip(f + rng.normal(0.0, sigma, f.shape), 0, 255).astype(np.uint8)
            writer.write(f)
    finally:
        writer.release()
    return path


def write_ground_truth(
    plan: LinePlan, ranges: Sequence[DefectRange], path, min_cover: float, video: str = ""
) -> Path:
    """The ground-truth JSON: video geometry, every piece, the injected defect ranges."""
    doc = {
        "video": video,
        "frames": plan.n_frames,
        "fps": plan.fps,
        "width": plan.width,
        "height": plan.height,
        "move_frames": plan.move_frames,
        "dwell_frames": plan.dwell_frames,
        "seed": plan.seed,
        "min_cover": min_cover,
        "range_note": (
            "start..end (inclusive): frames where the defect piece covers >= min_cover "
            "of the centre square the detector scores; visible_start..visible_end: "
            "any part of it in that square"
        ),
        "defects": [asdict(r) for r in ranges],
        "pieces": [asdict(p) for p in plan.pieces],
        **plan.meta,
    }
    path = Path(path)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
