"""How a frame's JPEG is decoded: full colour, or greyscale at reduced scale (libjpeg DCT scaling).

A model that needs small grey input from a large colour JPEG pays for a full-colour decode and a
large resize on every frame. libjpeg can decode straight to grey at 1/2, 1/4 or 1/8 scale, for a
fraction of the cost -- but the pixels differ a little from "decode in colour, convert, resize",
so a model may be served that way only when its manifest says it was validated with that decode
path (``input.validated_decodes``; ``edge-models evaluate --decode`` measures accuracy on it).

Pure decisions here (:func:`serving_decode`, :func:`accepts`); the decode itself is one
``cv2.imdecode`` call (:func:`decode_jpeg`).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

Decode = Literal["color", "gray_reduced_2", "gray_reduced_4", "gray_reduced_8"]
COLOR: Decode = "color"
FLAGS: dict[str, int] = {
    "color": cv2.IMREAD_COLOR,
    "gray_reduced_2": cv2.IMREAD_REDUCED_GRAYSCALE_2,
    "gray_reduced_4": cv2.IMREAD_REDUCED_GRAYSCALE_4,
    "gray_reduced_8": cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# Cheapest first: the decode a source should use when the model accepts several.
_CHEAPEST_FIRST: tuple[Decode, ...] = ("gray_reduced_8", "gray_reduced_4", "gray_reduced_2", "color")


def accepts(validated: list[Decode] | tuple[Decode, ...], decode: str) -> bool:
    """Whether a model validated with ``validated`` may take a frame decoded as ``decode``.

    Full colour is what every model is specified against (the manifest's preprocessing starts
    from a colour frame), so it is always accepted.
    """
    return decode == COLOR or decode in validated


def serving_decode(consumers: list[list[Decode]]) -> Decode:
    """The cheapest decode every consumer of the frame accepts (each given by its validated list).

    One consumer that was not validated with a reduced path (a shadow model with other input, a
    sampler that keeps full frames) makes it full colour for all.
    """
    if not consumers:  # nothing validated a reduced path
        return COLOR
    for decode in _CHEAPEST_FIRST:
        if all(accepts(v, decode) for v in consumers):
            return decode
    return COLOR


def decode_jpeg(data: bytes | np.ndarray, decode: str) -> np.ndarray | None:
    """``cv2.imdecode`` with the flag for ``decode``: BGR (H, W, 3) or grey (H/k, W/k); None if corrupt."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if not buf.size:
        return None
    image: np.ndarray | None = cv2.imdecode(buf, FLAGS[decode])
    return image
