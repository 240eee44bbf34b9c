"""Save a grid of generated traffic scenes with their boxes drawn, to eyeball the generator.

Usage: python scripts/show_scene.py [out.png] [seed]
Boxes: red = car, cyan = pedestrian, magenta = cyclist.
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from kd_engine.data.detection.scenes import draw_boxes, generate_scenes


def save_example(out: str | Path = "artifacts/detection/scene_example.png", seed: int = 0,
                 n: int = 8, cols: int = 4, scale: int = 3) -> Path:
    """Render ``n`` scenes of one seed side by side (with their clean boxes) into ``out``."""
    scenes = generate_scenes(n, seed=seed)
    size = scenes.images.shape[-1] * scale
    grid = Image.new("RGB", (cols * size + (cols - 1) * 4, -(-n // cols) * (size + 4) - 4), "white")
    for i, img in enumerate(scenes.images):
        anns = [a for a in scenes.coco_clean["annotations"] if a["image_id"] == i + 1]
        at = ((i % cols) * (size + 4), (i // cols) * (size + 4))
        grid.paste(draw_boxes(img, anns, scale), at)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(save_example(*(args[:1] or []), *([int(args[1])] if len(args) > 1 else [])))
