"""Generated pictures for the demo index (`./serve.sh --demo`): coloured shapes with captions and metadata.

    python -m batch.demo_images --output DIR [--count 48]

Writes DIR/images/*.png and DIR/items.csv (id, image, caption, color, shape, size, price): enough for the
playground's search, filters and thumbnails to show something with no photos and no network. The same
arguments give the same files. A demo bundle's random weights make the neighbours meaningless; the pages,
shapes and filters are real.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (214, 40, 40), "green": (46, 160, 67), "blue": (31, 111, 235), "yellow": (240, 200, 40),
          "purple": (137, 87, 229), "orange": (247, 129, 40)}
SHAPES = ("circle", "square", "triangle")
SIDE = 160


def picture(color: str, shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(200, 256, 3))
    image = Image.new("RGB", (SIDE, SIDE), background)
    draw = ImageDraw.Draw(image)
    cx, cy = (int(v) for v in rng.integers(size // 2 + 4, SIDE - size // 2 - 4, 2))
    box = (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=COLORS[color])
    return image


def write(out: Path, count: int, seed: int = 0) -> Path:
    """The pictures and DIR/items.csv; returns the CSV's path."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        color = list(COLORS)[i % len(COLORS)]
        shape = SHAPES[(i // len(COLORS)) % len(SHAPES)]
        size = int(rng.integers(40, 120))
        name = f"images/{i:03d}-{color}-{shape}.png"
        picture(color, shape, size, rng).save(out / name, format="PNG")
        rows.append([f"demo-{i:03d}", name, f"a {'large' if size >= 80 else 'small'} {color} {shape}", color, shape,
                     size, f"{rng.integers(100, 5000) / 100:.2f}"])
    path = out / "items.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "caption", "color", "shape", "size", "price"])
        writer.writerows(rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--count", type=int, default=48)
    args = parser.parse_args()
    print(write(args.output, args.count))


if __name__ == "__main__":
    main()
