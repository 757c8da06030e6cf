"""DiffSQL: self-supervised depth from monocular video with SD features and a dynamic self-query layer."""
from .model import DiffSQL

__all__ = ["DiffSQL"]
