"""``diffdepth demo``: serve the Gradio web app (needs ``pip install "diffdepth[demo]"``)."""
from __future__ import annotations

import argparse

HELP = "serve a web app (Gradio) to try the models on your own images; needs the [demo] extra"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", action="append", default=[],
                   help="method id offered in the app; repeatable (one per --checkpoint, or one for all)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="local folder or hub id offered in the app (loaded at start); repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--max-file-size", default="50mb", help="largest upload accepted (default: 50mb)")
    p.add_argument("--no-preload", action="store_true", help="load the models on first use instead of at start")


def run(args: argparse.Namespace) -> int:
    import os

    from ..errors import InputError
    from ..demo.backend import DemoBackend, parse_choices

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError('the demo needs gradio — pip install "diffdepth[demo]"') from None
    from ..demo.app import build_app

    backend = DemoBackend(parse_choices(args.method, args.checkpoint), device=args.device, dtype=args.dtype)
    try:
        if not args.no_preload:
            backend.preload()  # a bad --checkpoint fails here, before serving
        app = build_app(backend)
        app.launch(server_name=args.host, server_port=args.port, share=args.share,
                   max_file_size=args.max_file_size, show_error=False)
    finally:
        backend.close()
    return 0
