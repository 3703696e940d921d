"""Face masks in the canonical crop, colour matching, seamless blending and paste-back."""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache

import cv2
import numpy as np

from idmrag_plugin.engine.align import AlignedFace

# Face ellipse in the canonical crop (fractions of its side): brows to chin, cheek to cheek.
FACE_CENTER = (0.5, 0.55)
FACE_AXES = (0.30, 0.40)


#: A turned face's far side: the face ellipse is pulled in there by this many times the nose
#: tip's offset from the eyes' midpoint (both in shares of the crop's side), at most ``FAR_SIDE_MAX``.
FAR_SIDE_PULL = 3.0
FAR_SIDE_MAX = 0.12


def far_side_cut(landmarks: np.ndarray, size: int) -> float:
    """How far the face ellipse's far side should be pulled in for a face turned away from the
    camera, signed (negative: the left side, positive: the right), in shares of the crop's side,
    from its five landmarks in the crop (eyes, nose tip, mouth corners).

    Aligned by its eyes and mouth, a turned face's far cheek ends well inside the frontal
    ellipse, which then covers the background beside it; a face drawn over the whole ellipse
    paints skin there (a pale patch against grass or a backdrop). The nose tip moves towards the
    far side as the face turns, so its offset says how far.
    """
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if points.shape[0] < 3 or not np.all(np.isfinite(points[:3])) or size <= 0:
        return 0.0
    offset = (points[2, 0] - (points[0, 0] + points[1, 0]) / 2.0) / size
    return float(np.clip(FAR_SIDE_PULL * offset, -FAR_SIDE_MAX, FAR_SIDE_MAX))


def face_mask(size: int, grow: float = 1.0, feather: float = 0.0, far_cut: float = 0.0) -> np.ndarray:
    """Float mask (size, size) in [0, 1]: the face ellipse, optionally grown and feathered, and
    with ``far_cut`` (:func:`far_side_cut`) its far side pulled in by that share of the side.

    Feathering only adds soft weight outside the ellipse; inside it the mask is exactly 1.
    """
    mask = np.zeros((size, size), np.float32)
    center = (round(FACE_CENTER[0] * size), round(FACE_CENTER[1] * size))
    axes = (round(FACE_AXES[0] * size * grow), round(FACE_AXES[1] * size * grow))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1.0, thickness=-1)
    if far_cut:
        pulled = np.zeros_like(mask)
        center = (round((FACE_CENTER[0] - far_cut / 2.0) * size), center[1])
        cv2.ellipse(pulled, center, (max(1, round((FACE_AXES[0] * grow - abs(far_cut) / 2.0) * size)), axes[1]),
                    0, 0, 360, 1.0, thickness=-1)
        mask = np.minimum(mask, pulled)  # pixel rounding must not grow it on the near side
    if feather > 0:
        radius = max(1, round(feather * size))
        soft = cv2.GaussianBlur(mask, (0, 0), sigmaX=radius / 2.0)
        mask = np.maximum(mask, np.clip(soft * 2.0, 0.0, 1.0))
    return mask


def match_colour(source: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift ``source``'s per-channel Lab mean and spread inside ``mask`` to ``reference``'s."""
    weights = mask > 0.5
    if weights.sum() < 16:
        return source
    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)
    s_mean, s_std = src[weights].mean(axis=0), src[weights].std(axis=0) + 1e-3
    r_mean, r_std = ref[weights].mean(axis=0), ref[weights].std(axis=0) + 1e-3
    # Lightness keeps a bounded gain; chroma may shrink to nothing, so that a face pasted
    # into a black-and-white photo is black and white too.
    gain = np.clip(r_std / s_std, (0.5, 0.0, 0.0), (2.0, 2.0, 2.0))
    out = (src - s_mean) * gain + r_mean
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


#: How much greener (Lab a) or bluer (Lab b) than the reference's mean a drawn face may be.
CAST_LIMIT = np.array([8.0, 10.0], np.float32)


def shift_tone(drawn: np.ndarray, reference: np.ndarray, inner: np.ndarray, drawn_mask: np.ndarray) -> np.ndarray:
    """Move ``drawn``'s mean Lab colour inside ``inner`` to ``reference``'s there.

    The shift is whole inside ``inner`` and fades to nothing at the edge of ``drawn_mask``
    (binary; where the drawing meets kept pixels), so pixels outside ``drawn_mask`` stay
    exactly as they are. Only the mean moves: matching the spread too would amplify a soft
    drawing's smudges. Beyond the mean, no drawn pixel may be greener or bluer than the
    reference's mean by more than ``CAST_LIMIT`` (Lab a, b): skin does not go there, while a
    soft drawing's casts (a green glow by the jaw) do; redder and yellower (lips, warm light)
    are left alone.
    """
    region = inner > 0.5
    if region.sum() < 16:
        return drawn
    lab = cv2.cvtColor(drawn, cv2.COLOR_RGB2LAB).astype(np.float32)
    target = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)[region].mean(axis=0)
    shift = target - lab[region].mean(axis=0)
    inside = (drawn_mask > 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)  # px to the nearest kept pixel
    band = max(float(depth[region].min()), 1.0)  # the depth at which ``inner`` begins
    weight = np.clip((depth - 1.0) / max(band - 1.0, 1.0), 0.0, 1.0)[..., None]  # none on the edge ring
    shifted = lab + weight * shift
    floor = target[1:] - CAST_LIMIT
    chroma = shifted[..., 1:]
    shifted[..., 1:] = chroma + weight * (np.maximum(chroma, floor) - chroma)
    out = cv2.cvtColor(np.clip(shifted, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return np.where(inside[..., None] > 0, out, drawn)


_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


class _PoissonSystem:
    """The factorised 5-point Laplacian over one mask's pixels (Dirichlet values outside it)."""

    def __init__(self, mask: np.ndarray) -> None:
        import scipy.sparse
        import scipy.sparse.linalg

        inside = mask > 0.5
        height, width = inside.shape
        self.ys, self.xs = np.nonzero(inside)
        count = len(self.ys)
        index = -np.ones(inside.shape, np.int64)
        index[inside] = np.arange(count)
        rows, cols = [np.arange(count)], [np.arange(count)]
        # The right-hand side is linear in the drawing's and the context's pixels: built once
        # as two sparse operators over the flattened images (signed pixel picks per link).
        pixel = self.ys * width + self.xs
        guide_rows: list[np.ndarray] = []
        guide_cols: list[np.ndarray] = []
        guide_signs: list[np.ndarray] = []
        known_rows: list[np.ndarray] = []
        known_cols: list[np.ndarray] = []

        def pick(which: np.ndarray, columns: np.ndarray, sign: float) -> None:
            guide_rows.append(np.nonzero(which)[0])
            guide_cols.append(columns[which])
            guide_signs.append(np.full(int(which.sum()), sign))
        degree = np.zeros(count)
        self.has_border = False
        for dy, dx in _NEIGHBOURS:
            y2, x2 = self.ys + dy, self.xs + dx
            valid = (y2 >= 0) & (y2 < height) & (x2 >= 0) & (x2 < width)  # off the crop: no constraint
            degree += valid
            neighbour = np.full(count, -1, np.int64)
            neighbour[valid] = index[y2[valid], x2[valid]]
            interior = neighbour >= 0
            border = valid & ~interior
            self.has_border |= bool(border.any())
            rows.append(np.nonzero(interior)[0])
            cols.append(neighbour[interior])
            # Across the mask's edge the drawing has no pixel to take a gradient to; its gradient
            # one pixel further in stands for it (zero where the mask is one pixel thin).
            y0, x0 = self.ys - dy, self.xs - dx
            inward = (y0 >= 0) & (y0 < height) & (x0 >= 0) & (x0 < width)
            inward[inward] = index[y0[inward], x0[inward]] >= 0
            beyond = np.clip(y2, 0, height - 1) * width + np.clip(x2, 0, width - 1)
            behind = np.clip(y0, 0, height - 1) * width + np.clip(x0, 0, width - 1)
            extrapolated = border & inward
            pick(interior, pixel, 1.0)  # the drawing's gradient towards an inside neighbour
            pick(interior, beyond, -1.0)
            pick(extrapolated, behind, 1.0)  # across the edge: the gradient one pixel further in
            pick(extrapolated, pixel, -1.0)
            known_rows.append(np.nonzero(border)[0])  # the context's value just outside the mask
            known_cols.append(beyond[border])
        values = np.concatenate([degree, *[-np.ones(len(r)) for r in rows[1:]]])
        matrix = scipy.sparse.csc_matrix((values, (np.concatenate(rows), np.concatenate(cols))), shape=(count, count))
        self.solver = scipy.sparse.linalg.splu(matrix) if self.has_border and count else None
        shape = (count, height * width)
        self.from_guide = scipy.sparse.csr_matrix(
            (np.concatenate(guide_signs), (np.concatenate(guide_rows), np.concatenate(guide_cols))), shape=shape)
        known_rows_all = np.concatenate(known_rows)
        self.from_known = scipy.sparse.csr_matrix(
            (np.ones(len(known_rows_all)), (known_rows_all, np.concatenate(known_cols))), shape=shape)

    def solve(self, drawn: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Pixels under the mask: ``drawn``'s gradients, ``context``'s values just outside it."""
        assert self.solver is not None
        channels = drawn.shape[2]
        guide = drawn.reshape(-1, channels).astype(np.float64)
        known = context.reshape(-1, channels).astype(np.float64)
        return self.solver.solve(self.from_guide @ guide + self.from_known @ known)


_SYSTEMS: OrderedDict[bytes, _PoissonSystem] = OrderedDict()
_SYSTEMS_LOCK = threading.Lock()


def _poisson_system(mask: np.ndarray) -> _PoissonSystem:
    key = np.packbits(mask > 0.5).tobytes() + np.asarray(mask.shape, np.int32).tobytes()
    with _SYSTEMS_LOCK:
        system = _SYSTEMS.get(key)
        if system is not None:
            _SYSTEMS.move_to_end(key)
            return system
    system = _PoissonSystem(mask)  # a few ms at 128 px; masks come in a handful of sizes
    with _SYSTEMS_LOCK:
        _SYSTEMS[key] = system
        while len(_SYSTEMS) > 8:
            _SYSTEMS.popitem(last=False)
    return system


def poisson_blend(drawn: np.ndarray, context: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Seamless composite (Perez et al. 2003) of ``drawn`` into ``context`` under ``mask``.

    Inside the binary ``mask`` the result keeps the drawing's gradients between mask pixels
    and meets ``context``'s pixels just outside the mask, so a drawing whose edge does not
    match the photo (a lighter rim, a different tone) blends into it without a seam. Only
    ``context``'s pixels outside the mask are read: what lies under it never reaches the
    result. Outside the mask the result is ``context`` exactly. uint8 (H, W, C) in and out.
    """
    if drawn.shape != context.shape or drawn.shape[:2] != mask.shape:
        raise ValueError(f"poisson_blend: drawn {drawn.shape}, context {context.shape}, mask {mask.shape} differ")
    inside = mask > 0.5
    system = _poisson_system(mask)
    if system.solver is None:  # nothing outside the mask to meet
        return np.where(inside[..., None], drawn, context)
    out = context.copy()
    out[system.ys, system.xs] = np.clip(np.round(system.solve(drawn, context)), 0, 255).astype(context.dtype)
    return out


def region_of(face: AlignedFace, shape: tuple[int, int], pad: int = 2) -> tuple[int, int, int, int]:
    """Image-space bounding box (x1, y1, x2, y2), clipped, of the face's whole crop."""
    s = face.size
    corners = np.array([[0, 0, 1], [s, 0, 1], [0, s, 1], [s, s, 1]], dtype=np.float64)
    pts = corners @ face.inverse.T
    x1, y1 = np.floor(pts.min(axis=0)).astype(int) - pad
    x2, y2 = np.ceil(pts.max(axis=0)).astype(int) + pad
    h, w = shape
    return max(0, x1), max(0, y1), min(w, x2), min(h, y2)


def warp_into_region(
    crop: np.ndarray, face: AlignedFace, region: tuple[int, int, int, int], border: int = cv2.BORDER_CONSTANT
) -> np.ndarray:
    """Warp a crop-space array into the image region ``region`` only (cheap on big images);
    outside the crop: 0, or with ``border=cv2.BORDER_REPLICATE`` the crop's edge pixels."""
    x1, y1, x2, y2 = region
    inverse = face.inverse.copy()
    inverse[:, 2] -= (x1, y1)
    return cv2.warpAffine(crop, inverse, (x2 - x1, y2 - y1), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)


#: Width (share of the crop's side) over which a pasted face's weight falls to nothing at the
#: edge of its crop. The face ellipse, grown and feathered, reaches the crop's bottom edge
#: below the chin; cut off there, it left a hard edge, and the new face's pixels, interpolated
#: with the black past the crop, a dark line across the neck in most pasted faces.
CROP_EDGE_TAPER = 0.03


@lru_cache(maxsize=8)
def crop_edge_taper(size: int) -> np.ndarray:
    """Float weights (size, size): 1 inside, falling linearly to 0 at the crop's edge."""
    width = max(1.0, CROP_EDGE_TAPER * size)
    steps = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32) + 0.5
    ramp = np.clip(steps / width, 0.0, 1.0)
    taper = np.minimum(ramp[:, None], ramp[None, :])
    taper.setflags(write=False)
    return taper


def kept_as_is(new_crop: np.ndarray, crop: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Float (S, S) in [0, 1]: 1 where the generator returned the crop's own pixels (exactly,
    in a connected region that reaches where the paste ``weights`` are 0, past the pasted
    ellipse), falling to 0 within a pixel or two inside that region; 0 everywhere else. Every
    pixel the generator changed gets 0, and so does an island of pixels a drawing happens to
    share with the original inside the face."""
    same = np.all(new_crop == crop, axis=-1)
    if not same.any():
        return np.zeros(same.shape, np.float32)
    _, labels = cv2.connectedComponents(same.astype(np.uint8), connectivity=4)
    reaching = np.unique(labels[same & (weights <= 0)])
    kept = np.isin(labels, reaching[reaching > 0]).astype(np.float32)
    inner = cv2.erode(kept, np.ones((3, 3), np.uint8))
    return np.minimum(cv2.GaussianBlur(inner, (0, 0), 1.0), kept)


def paste_face(
    image: np.ndarray, new_crop: np.ndarray, face: AlignedFace, feather: float = 0.06,
    grow: float = 1.0, colour_match: bool = True, far_cut: float = 0.0,
) -> None:
    """Blend ``new_crop`` (canonical crop space) into ``image`` in place.

    The new face is colour-matched to the crop it replaces (unless ``colour_match`` is off:
    an inpainter already fits its context), then composited through the feathered face
    ellipse grown by ``grow`` (its far side pulled in by ``far_cut``, see :func:`far_side_cut`);
    the inside of the ellipse is entirely the new face, except what the generator returned
    unchanged (see :func:`kept_as_is`), which stays the photo's own pixels.
    """
    if new_crop.shape != face.crop.shape:
        raise ValueError(f"generated face has shape {new_crop.shape}, expected {face.crop.shape}")
    region = region_of(face, image.shape[:2])
    x1, y1, x2, y2 = region
    if x2 <= x1 or y2 <= y1:
        return
    mask = face_mask(face.size, grow=grow, feather=feather, far_cut=far_cut)
    matched = match_colour(new_crop, face.crop, mask) if colour_match else new_crop
    weights = mask * crop_edge_taper(face.size)
    # What the generator returned as the crop had it comes from the photo itself, at the
    # photo's resolution: a crop-sized copy pasted back over a large face blurs its hair.
    weights = weights * (1.0 - kept_as_is(new_crop, face.crop, weights))
    alpha = warp_into_region(weights, face, region)[..., None]
    layer = warp_into_region(matched, face, region, cv2.BORDER_REPLICATE).astype(np.float32)
    patch = image[y1:y2, x1:x2].astype(np.float32)
    image[y1:y2, x1:x2] = np.clip(alpha * layer + (1.0 - alpha) * patch + 0.5, 0, 255).astype(np.uint8)
