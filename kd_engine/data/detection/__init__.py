"""Detection data: procedural traffic scenes, COCO writing and loading, KITTI conversion.

The engine reads detection data only through ``load_coco``; scenes and KITTI labels are first
written as COCO JSON. Not registered in ``DATASETS`` here: the data package wires a builder.
"""
from kd_engine.data.detection.coco import (
    CLIP_TOLERANCE,
    DetectionDataset,
    detection_collate,
    load_coco,
    write_coco,
    write_images,
    write_scenes,
)
from kd_engine.data.detection.kitti import kitti_to_coco, parse_kitti_line
from kd_engine.data.detection.scenes import CATEGORIES, SceneSet, draw_boxes, generate_scenes

__all__ = [
    "CATEGORIES", "CLIP_TOLERANCE", "DetectionDataset", "SceneSet", "detection_collate",
    "draw_boxes", "generate_scenes", "kitti_to_coco", "load_coco", "parse_kitti_line",
    "write_coco", "write_images", "write_scenes",
]
