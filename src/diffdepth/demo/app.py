"""The Gradio layout and callbacks. Each callback calls :class:`DemoBackend` and turns any error
into the one-line message the CLI would print: a bad upload never shows a traceback and never
stops the server."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from ..errors import DiffdepthError as DiffdepthErrorType
from ..io.colormaps import COLORMAPS
from .backend import DemoBackend, one_line

log = logging.getLogger(__name__)

AUTO = "auto (from the checkpoint)"
CMAPS = list(COLORMAPS)  # the maps that exist, no others


def _int_or_none(x: Any) -> Optional[int]:
    return None if x is None or x == "" else int(x)


def _method(x: Optional[str]) -> Optional[str]:
    return None if not x or x == AUTO else x


def _checkpoint(x: Optional[str]) -> Optional[str]:
    x = (x or "").strip()
    return x or None


def _error(err: Exception, what: str = "prediction") -> str:
    """The page's one-line message for ``err`` (call it in the ``except``: an unexpected error is logged
    with its traceback)."""
    if not isinstance(err, DiffdepthErrorType):
        log.exception("demo: %s failed", what)
    return f"**Error:** {one_line(err)}"


def build_app(backend: DemoBackend):
    """The ``gr.Blocks`` app for ``backend`` (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from ..registry import list_methods

    methods = [AUTO] + [m.id for m in list_methods()]
    checkpoints = [c.checkpoint for c in backend.choices if c.checkpoint]
    first = backend.choices[0] if backend.choices else None
    default_method = (first.method if first and first.method else AUTO)
    default_ckpt = first.checkpoint if first and first.checkpoint else None

    def model_pickers(suffix: str = ""):
        with gr.Row():
            m = gr.Dropdown(methods, value=default_method, label=f"Method{suffix}")
            c = gr.Dropdown(checkpoints, value=default_ckpt, allow_custom_value=True,
                            label=f"Checkpoint{suffix} (folder or hub id; empty: the method's published weights)")
        return m, c

    def run_image(path, pasted, method, checkpoint, steps, ensemble_size, processing_res, seed, flip, cmap):
        # the upload and the paste box clear each other, so at most one holds an image; a pasted
        # image is an [H,W,3] array, which the backend runs exactly as an uploaded file
        image = pasted if pasted is not None else path
        options = {"steps": _int_or_none(steps), "ensemble_size": _int_or_none(ensemble_size),
                   "seed": _int_or_none(seed), "flip": bool(flip)}
        try:
            r = backend.predict_image(image, _method(method), _checkpoint(checkpoint), options,
                                      processing_res=_int_or_none(processing_res), cmap=cmap)
        except Exception as err:  # noqa: BLE001 — every error becomes one line in the page
            return None, gr.update(value=None, visible=False), None, None, _error(err)
        w, h = r.size
        lines = [f"**{r.kind}**, {w}x{h} px; PLY intrinsics: {r.intrinsics}.", f"16-bit PNG: `{r.png16_encoding}`"]
        if r.ignored_options:
            lines.append(f"Ignored (not accepted by this method): {', '.join(r.ignored_options)}.")
        files = [str(r.files[k]) for k in ("npy", "png16", "ply", "uncertainty") if k in r.files]
        unc = gr.update(value=r.uncertainty_u8, visible=r.uncertainty_u8 is not None)
        return (r.rgb_u8, r.color_u8), unc, str(r.files["glb"]) if "glb" in r.files else None, files, "  \n".join(lines)

    def run_compare(path, m1, c1, m2, c2, cmap):
        out, msgs = [], []
        for m, c in ((m1, c1), (m2, c2)):
            try:
                r = backend.predict_image(path, _method(m), _checkpoint(c), {}, cmap=cmap)
                out.append((r.rgb_u8, r.color_u8))
                msgs.append(f"{_method(m) or 'auto'}: {r.kind}")
            except Exception as err:  # noqa: BLE001
                out.append(None)
                msgs.append(_error(err))
        return out[0], out[1], "  \n".join(msgs)

    def run_video(path, method, checkpoint, processing_res, seed, cmap, progress=gr.Progress()):
        def step(done, total):
            if total:
                progress((done, total), desc="frames", unit="frame")
            else:  # the container does not say how many frames: no fraction to show
                progress(None, desc=f"{done} frames")

        try:
            mp4, npz, n = backend.predict_video(path, _method(method), _checkpoint(checkpoint),
                                                {"seed": _int_or_none(seed)},
                                                processing_res=_int_or_none(processing_res), cmap=cmap,
                                                progress=step)
        except Exception as err:  # noqa: BLE001
            return None, None, _error(err, "video prediction")
        return str(mp4), [str(mp4), str(npz)], f"{n} frames."

    with gr.Blocks(title="diffdepth demo") as app:
        gr.Markdown("# diffdepth — depth from one image\nUpload or paste an image, pick a model, press **Estimate depth**.")
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column(scale=1):
                    # a file upload goes to our own reader (a corrupt file gets the CLI's message)
                    image_in = gr.File(label="Image", type="filepath", elem_id="image-input")
                    paste_in = gr.Image(label="… or paste an image (clipboard button)", sources=["clipboard"],
                                        type="numpy", image_mode="RGB", height=160, elem_id="image-paste")
                    method, checkpoint = model_pickers()
                    with gr.Accordion("Method options (used where the method accepts them)", open=False):
                        with gr.Row():
                            steps = gr.Number(None, precision=0, label="Steps (empty: default)")
                            ensemble = gr.Number(None, precision=0, label="Ensemble size")
                        with gr.Row():
                            res = gr.Number(None, precision=0, label="Processing resolution (0: native)")
                            seed = gr.Number(None, precision=0, label="Seed")
                        with gr.Row():
                            flip = gr.Checkbox(False, label="Flip averaging")
                            cmap = gr.Dropdown(CMAPS, value=CMAPS[0], label="Colour map")
                    run = gr.Button("Estimate depth", variant="primary", elem_id="run-image")
                    status = gr.Markdown("", elem_id="status")
                with gr.Column(scale=2):
                    slider = gr.ImageSlider(label="Input | depth", type="numpy", format="png", elem_id="depth-slider")
                    uncertainty = gr.Image(label="Uncertainty", visible=False, elem_id="uncertainty")
                    cloud = gr.Model3D(label="Point cloud", elem_id="point-cloud")
                    downloads = gr.File(label="Downloads (.npy, 16-bit PNG, PLY)", file_count="multiple",
                                        elem_id="downloads", interactive=False)
            image_in.upload(lambda _: None, image_in, paste_in, queue=False)
            paste_in.input(lambda x: gr.update() if x is None else None, paste_in, image_in, queue=False, preprocess=False)
            run.click(run_image, [image_in, paste_in, method, checkpoint, steps, ensemble, res, seed, flip, cmap],
                      [slider, uncertainty, cloud, downloads, status], concurrency_id="models")
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column():
                    vid_in = gr.File(label="Video", type="filepath", elem_id="video-input")
                    vm, vc = model_pickers(" ")
                    with gr.Row():
                        vres = gr.Number(None, precision=0, label="Processing resolution (0: native)")
                        vseed = gr.Number(None, precision=0, label="Seed")
                    vcmap = gr.Dropdown(CMAPS, value=CMAPS[0], label="Colour map")
                    vid_run = gr.Button("Estimate depth", variant="primary", elem_id="run-video")
                    vid_status = gr.Markdown("", elem_id="video-status")
                with gr.Column(scale=2):
                    vid_out = gr.Video(label="Depth video", elem_id="depth-video")
                    vid_files = gr.File(label="Downloads (.mp4, .npz)", file_count="multiple",
                                        interactive=False, elem_id="video-downloads")
            vid_run.click(run_video, [vid_in, vm, vc, vres, vseed, vcmap], [vid_out, vid_files, vid_status],
                          concurrency_id="models")
        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column():
                    cmp_in = gr.File(label="Image", type="filepath", elem_id="compare-input")
                    m1, c1 = model_pickers(" A")
                    m2, c2 = model_pickers(" B")
                    cmp_cmap = gr.Dropdown(CMAPS, value=CMAPS[0], label="Colour map")
                    cmp_run = gr.Button("Compare", variant="primary", elem_id="run-compare")
                    cmp_status = gr.Markdown("", elem_id="compare-status")
                with gr.Column(scale=2):
                    with gr.Row():
                        out_a = gr.ImageSlider(label="A", type="numpy", format="png")
                        out_b = gr.ImageSlider(label="B", type="numpy", format="png")
            cmp_run.click(run_compare, [cmp_in, m1, c1, m2, c2, cmp_cmap], [out_a, out_b, cmp_status],
                          concurrency_id="models")
    # one prediction at a time across all tabs (one concurrency group): the cached models are shared,
    # and some keep state while predicting (e.g. a scheduler's timesteps)
    app.queue(default_concurrency_limit=1)
    return app
