"""Procedural RGB-D scenes with exact metric ground truth, rendered by ray casting in numpy
(``diffdepth synth``): :mod:`.geometry` (primitives, camera, ray casting), :mod:`.rendering`
(textures, shading, lidar), :mod:`.scenes` (random rooms, streets, driving sequences) and
:mod:`.layouts` (the dataset folders written)."""
from .geometry import Box, Camera, Cylinder, DirectionalLight, Material, Plane, PointLight, Scene, Sphere, make_pose
from .layouts import KINDS, LAYOUTS, SYNTH_DATE, write_dataset
from .rendering import lidar_scan, render
from .scenes import default_intrinsics, make_indoor_scene, make_outdoor_scene, make_sequence, render_sample

__all__ = ["Box", "Camera", "Cylinder", "DirectionalLight", "Material", "Plane", "PointLight", "Scene", "Sphere",
           "make_pose", "KINDS", "LAYOUTS", "SYNTH_DATE", "write_dataset", "lidar_scan", "render",
           "default_intrinsics", "make_indoor_scene", "make_outdoor_scene", "make_sequence", "render_sample"]
