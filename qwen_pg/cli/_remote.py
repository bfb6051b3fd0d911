"""The `--url` option of commands that can use the `remote` backend (an OpenAI-compatible server: vLLM, TEI,
another qwen-pg worker), and its one rule: `--backend remote` needs a URL, and a URL needs `--backend remote`."""

from __future__ import annotations

import argparse
import os

from . import CLIError

URL_ENV = "QWEN_PG_REMOTE_URL"


def add_url_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help=f"with --backend remote: the OpenAI-compatible server's base URL (http://…, https://… or "
                        f"unix:///path; default ${URL_ENV}); its API key comes from $QWEN_PG_REMOTE_API_KEY")


def remote_url(backend: str | None, url: str | None) -> str | None:
    """The URL to give the remote backend (None for other backends), or a CLIError naming what is missing."""
    if backend != "remote":
        if url:
            raise CLIError("--url is for --backend remote (the other backends run the model in this process)")
        return None
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise CLIError(f"--backend remote needs --url (or ${URL_ENV})")
    return url
