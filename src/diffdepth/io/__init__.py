"""Image reading, depth export (npy, 16-bit PNG, colour, side-by-side, PLY) and video I/O."""
from .export import (OUTPUT_FORMATS, OUTPUT_SUFFIXES, PNG16_KEY, PlyData, SaveResult, colorize,
                     colorize_segmentation, depth_range, encode_png16, intrinsics_for, output_path,
                     parse_formats, read_ply, read_png16, save_color, save_npy, save_outputs,
                     save_ply, save_png16, save_side_by_side, side_by_side)
from .images import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ImageMeta, is_image_path, is_video_path, read_image,
                     read_image_with_meta, to_float_rgb)
from .video import (VideoWriter, iter_video_frames, load_npz_frames, save_depth_video, save_npz_frames,
                    video_depth_range, video_info)

__all__ = [
    "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "ImageMeta", "read_image", "read_image_with_meta",
    "to_float_rgb", "OUTPUT_FORMATS", "OUTPUT_SUFFIXES", "PNG16_KEY", "PlyData", "SaveResult",
    "colorize", "colorize_segmentation", "depth_range", "encode_png16", "intrinsics_for",
    "output_path", "parse_formats", "read_ply", "read_png16", "save_color", "save_npy",
    "save_outputs", "save_ply", "save_png16", "save_side_by_side", "side_by_side",
    "VideoWriter", "iter_video_frames", "load_npz_frames", "save_depth_video", "save_npz_frames",
    "video_depth_range", "video_info", "is_image_path", "is_video_path",
]
