"""Small NumPy drawing helpers for the drawn (``render_mode="rgb_array"``) families.

Images are ``(H, W, 3)`` uint8 arrays, ``(0, 0)`` the top-left pixel; everything is clipped
to the image, so a shape partly outside is drawn partly.
"""

from __future__ import annotations

import numpy as np

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
GREY: Color = (200, 200, 200)
DARK: Color = (60, 60, 60)
BLUE: Color = (30, 60, 200)
GREEN: Color = (40, 170, 60)
RED: Color = (210, 50, 40)
ORANGE: Color = (240, 150, 20)


def canvas(height: int, width: int) -> np.ndarray:
    """A white image."""
    return np.full((height, width, 3), 255, dtype=np.uint8)


def rect(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
    """Fill the pixels ``x0 <= x < x1``, ``y0 <= y < y1``."""
    h, w = img.shape[:2]
    x0, x1 = max(int(x0), 0), min(int(x1), w)
    y0, y1 = max(int(y0), 0), min(int(y1), h)
    if x0 < x1 and y0 < y1:
        img[y0:y1, x0:x1] = color


def disc(img: np.ndarray, x: float, y: float, r: float, color: Color) -> None:
    """Fill the disc of radius ``r`` around ``(x, y)``."""
    h, w = img.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = color


def ring(img: np.ndarray, x: float, y: float, r: float, color: Color, width: float = 2) -> None:
    """Draw the circle of radius ``r`` around ``(x, y)``, ``width`` pixels thick."""
    h, w = img.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    d2 = (xx - x) ** 2 + (yy - y) ** 2
    img[(d2 <= r * r) & (d2 >= (r - width) ** 2)] = color


def line(
    img: np.ndarray, a: tuple[float, float], b: tuple[float, float], color: Color, width: int = 2
) -> None:
    """Draw the segment from ``a`` to ``b`` (pixel coordinates), ``width`` pixels thick."""
    n = int(max(abs(b[0] - a[0]), abs(b[1] - a[1]))) + 1
    for t in np.linspace(0.0, 1.0, n + 1):
        x, y = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
        half = width / 2
        rect(img, round(x - half), round(y - half), round(x + half), round(y + half), color)


def progress(img: np.ndarray, y0: int, y1: int, fraction: float, color: Color) -> None:
    """A full-width bar between rows ``y0`` and ``y1``, filled to ``fraction`` (0..1)."""
    w = img.shape[1]
    rect(img, 4, y0, w - 4, y1, GREY)
    rect(img, 4, y0, 4 + round((w - 8) * float(np.clip(fraction, 0.0, 1.0))), y1, color)
