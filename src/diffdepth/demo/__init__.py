"""``diffdepth demo``: a Gradio web app over the pipeline and the exporters (no depth logic here).

Needs the optional extra ``pip install "diffdepth[demo]"`` (gradio). :func:`build_app` returns the
``gr.Blocks``; :class:`DemoBackend` is the gradio-free part (model cache, prediction, exports) that
the callbacks call.
"""
from .backend import DemoBackend, ImageResult, Choice, parse_choices

__all__ = ["DemoBackend", "ImageResult", "Choice", "parse_choices", "build_app"]


def build_app(*args, **kwargs):
    from .app import build_app as _build

    return _build(*args, **kwargs)
