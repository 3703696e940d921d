"""A fixed photo context that foretells which pseudonym codes the renderer draws speckled.

Whether the renderer draws a pseudonym code as a mottled mask (see
:mod:`idmrag_plugin.generation.speckle`) depends on the photo's context but largely on the
code: a code drawn clean in a dark, low-key context tends to be drawn clean elsewhere.
Measured on LFW bench contexts (240 pseudonym codes of 30 people, each drawn into 30 other
people's photos): codes drawn clean into scikit-image's astronaut darkened by gamma 2.2 were
speckled in 12-16% of the other contexts, the rest in 46-68% (27-30% overall); choosing each
person's first such code among their first eight halved their first choice's speckled share
(24.6% to 10.9%, held out). A person's pseudonym drawn speckled in one of their photos is
replaced there (another pseudonym for that photo), so choosing it clean in the reference keeps
one person one pseudonym across more of their photos.

The context is built from a photo that ships with scikit-image (public domain), so nothing is
downloaded or bundled: the face aligned at landmarks the engine's detector found on it.
"""

from __future__ import annotations

import functools

import numpy as np

#: Gamma applied to the astronaut (a darker, low-key context).
GAMMA = 2.2
#: The five landmarks (left eye, right eye, nose, mouth corners) of the astronaut's face in
#: scikit-image's 512x512 ``astronaut()`` darkened by ``GAMMA``, as the engine's MTCNN found them.
LANDMARKS = np.array([[204.9, 101.4], [246.9, 104.3], [224.8, 128.8], [201.9, 139.2], [245.2, 142.9]],
                     dtype=np.float32)
#: Side of the aligned crop (the engine's default ``crop_size``; the renderer draws it at its own).
CROP_SIZE = 128


@functools.lru_cache(maxsize=4)
def reference_crop(size: int) -> np.ndarray:
    """The reference context's aligned face crop, ``size`` x ``size`` RGB uint8 (read-only)."""
    import skimage.data

    from idmrag_plugin.engine.align import align_face

    image = skimage.data.astronaut().astype(np.float32) / 255.0
    dark = (255.0 * image**GAMMA).astype(np.uint8)
    crop = align_face(dark, LANDMARKS, size).crop
    crop.setflags(write=False)
    return crop
