"""Cost-against-size plots as PNG: matplotlib when it is importable, else a tiny pure-Python (zlib + struct) writer."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import Series

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]

# A 5×7 bitmap font (capitals, digits, a little punctuation); lower case renders as capitals.
_GLYPHS: dict[str, tuple[int, ...]] = {
    "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30), "C": (14, 17, 16, 16, 16, 17, 14),
    "D": (30, 17, 17, 17, 17, 17, 30), "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17), "I": (14, 4, 4, 4, 4, 4, 14),
    "J": (7, 2, 2, 2, 2, 18, 12), "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17), "O": (14, 17, 17, 17, 17, 17, 14),
    "P": (30, 17, 17, 30, 16, 16, 16), "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4), "U": (17, 17, 17, 17, 17, 17, 14),
    "V": (17, 17, 17, 17, 17, 10, 4), "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 17, 10, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14), "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14), "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8), "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12), " ": (0,) * 7, ".": (0, 0, 0, 0, 0, 12, 12), ",": (0, 0, 0, 0, 12, 4, 8),
    ":": (0, 12, 12, 0, 12, 12, 0), "/": (1, 2, 2, 4, 8, 8, 16), "(": (2, 4, 8, 8, 8, 4, 2),
    ")": (8, 4, 2, 2, 2, 4, 8), "-": (0, 0, 0, 31, 0, 0, 0), "×": (0, 17, 10, 4, 10, 17, 0),
    "%": (24, 25, 2, 4, 8, 19, 3), "_": (0, 0, 0, 0, 0, 0, 31), "=": (0, 0, 31, 0, 31, 0, 0),
    "+": (0, 4, 4, 31, 4, 4, 0), "<": (2, 4, 8, 16, 8, 4, 2), ">": (8, 4, 2, 1, 2, 4, 8),
    "?": (14, 17, 1, 2, 4, 0, 4), "µ": (0, 17, 17, 17, 19, 29, 16),
}


class Canvas:
    def __init__(self, width: int, height: int, bg: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.w, self.h = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def set(self, x: int, y: int, c: tuple[int, int, int]) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def rect(self, x0: int, y0: int, x1: int, y1: int, c: tuple[int, int, int]) -> None:
        for y in range(max(0, y0), min(self.h, y1 + 1)):
            for x in range(max(0, x0), min(self.w, x1 + 1)):
                self.set(x, y, c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: tuple[int, int, int], width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        half = width // 2
        while True:
            self.rect(x0 - half, y0 - half, x0 - half + width - 1, y0 - half + width - 1, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def dashed_hline(self, x0: int, x1: int, y: int, c: tuple[int, int, int]) -> None:
        for x in range(x0, x1 + 1):
            if (x // 3) % 2 == 0:
                self.set(x, y, c)

    def text(self, x: int, y: int, s: str, c: tuple[int, int, int] = (0, 0, 0), scale: int = 1) -> int:
        """Draw s with its top-left at (x, y); return the x after it."""
        for ch in s:
            glyph = _GLYPHS.get(ch.upper(), _GLYPHS["?"])
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (1 << (4 - col)):
                        self.rect(x + col * scale, y + row * scale, x + col * scale + scale - 1,
                                  y + row * scale + scale - 1, c)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        ihdr = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def text_width(s: str, scale: int = 1) -> int:
    return len(s) * 6 * scale


def si(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def seconds(v: float) -> str:
    if v >= 1:
        return f"{v:g}S"
    if v >= 1e-3:
        return f"{v * 1e3:g}MS"
    return f"{v * 1e6:g}µS"


def _decades(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b += 1
    return [10.0 ** k for k in range(a, b + 1)]


def _panel(cv: Canvas, ox: int, oy: int, w: int, h: int, title: str, series: Sequence[Series]) -> None:
    pts = [p for s in series for p in s.points if p[0] > 0 and p[1] > 0]
    cv.text(ox + 10, oy + 8, title, scale=2)
    if not pts:
        cv.text(ox + 10, oy + 40, "NO DATA")
        return
    left, right, top, bottom = ox + 70, ox + w - 230, oy + 36, oy + h - 40
    xt = _decades(min(p[0] for p in pts), max(p[0] for p in pts))
    yt = _decades(min(p[1] for p in pts), max(p[1] for p in pts))
    lx0, lx1 = math.log10(xt[0]), math.log10(xt[-1])
    ly0, ly1 = math.log10(yt[0]), math.log10(yt[-1])

    def X(v: float) -> int:  # noqa: N802
        return int(left + (math.log10(v) - lx0) / (lx1 - lx0) * (right - left))

    def Y(v: float) -> int:  # noqa: N802
        return int(bottom - (math.log10(v) - ly0) / (ly1 - ly0) * (bottom - top))

    grey, dark = (225, 225, 225), (60, 60, 60)
    for v in xt:
        cv.line(X(v), top, X(v), bottom, grey)
        label = si(v)
        cv.text(X(v) - text_width(label) // 2, bottom + 6, label, dark)
    for v in yt:
        cv.line(left, Y(v), right, Y(v), grey)
        label = seconds(v) if series[0].ylabel == "seconds" else si(v)
        cv.text(left - 6 - text_width(label), Y(v) - 3, label, dark)
    cv.line(left, top, left, bottom, dark)
    cv.line(left, bottom, right, bottom, dark)
    xlabel = series[0].xlabel
    cv.text((left + right) // 2 - text_width(xlabel) // 2, bottom + 20, xlabel, dark)
    ly = top + 4
    for i, s in enumerate(series):
        c = PALETTE[i % len(PALETTE)]
        good = sorted(p for p in s.points if p[0] > 0 and p[1] > 0)
        for (x0, y0), (x1, y1) in zip(good, good[1:], strict=False):
            cv.line(X(x0), Y(y0), X(x1), Y(y1), c, width=2)
        for x, y in good:
            cv.rect(X(x) - 3, Y(y) - 3, X(x) + 3, Y(y) + 3, c)
        cv.rect(right + 16, ly, right + 24, ly + 6, c)
        cv.text(right + 30, ly, s.label[:30], dark)
        ly += 12


def write_plot(path: Path, groups: dict[str, list[Series]]) -> str:
    """One panel per group, stacked; returns the writer used ("matplotlib" or "builtin")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        fig, axes = plt.subplots(len(groups), 1, figsize=(8, 3.6 * len(groups)), squeeze=False)
        for ax, (title, series) in zip(axes[:, 0], groups.items(), strict=True):
            for s in series:
                good = sorted(p for p in s.points if p[0] > 0 and p[1] > 0)
                if good:
                    ax.loglog([p[0] for p in good], [p[1] for p in good], marker="s", label=s.label)
            ax.set_title(title)
            ax.set_xlabel(series[0].xlabel)
            ax.set_ylabel(series[0].ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return "matplotlib"
    w, ph = 760, 340
    cv = Canvas(w, ph * max(1, len(groups)))
    for i, (title, series) in enumerate(groups.items()):
        _panel(cv, 0, i * ph, w, ph, title, series)
    path.write_bytes(cv.png())
    return "builtin"
