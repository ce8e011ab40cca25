"""The HTML shell every headatlas page shares (the atlas report and the compare report): doctype, the
Content-Security-Policy, no referrer, the title, the stylesheet, the body, an optional JSON data block and the
page's own scripts. Nothing in it is fetched: scripts and styles are inline, and the policy forbids any
connection (:func:`headatlas.atlas.htmlsafe.csp`); a page without scripts gets ``script-src 'none'``.

The static assets live beside this module: ``assets/page.css`` (shared), ``assets/report.css`` and
``assets/report.js`` (the atlas report), ``vendor/plotly-cartesian.min.js`` (plotly.js's cartesian bundle, MIT,
see ``vendor/README.md``).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Sequence

from .htmlsafe import csp, esc, script_json

DATA_ID = "ha-data"


@functools.lru_cache(maxsize=None)
def asset(name: str) -> str:
    """The text of a packaged asset: ``"assets/report.js"``, ``"vendor/plotly-cartesian.min.js"``, ..."""
    return resources.files("headatlas.atlas").joinpath(name).read_text(encoding="utf-8")


def html_page(title: str, body: str, *, style: str = "", scripts: Sequence[str] = (), data: Any = None,
              generator: str = "") -> str:
    """One self-contained page. ``title`` is plain text (escaped here); ``body`` is HTML already built with
    every untrusted string escaped; ``style`` is appended to the shared stylesheet; ``data`` (if not None)
    becomes ``<script type="application/json" id="ha-data">`` (script-safe JSON, read with ``JSON.parse``);
    ``scripts`` run in order at the end of the body, each allowed by its hash."""
    policy = csp(list(scripts))
    head_bits = [f'<meta name="generator" content="{esc(generator)}">' if generator else ""]
    data_block = (f'<script type="application/json" id="{DATA_ID}">{script_json(data)}</script>\n'
                  if data is not None else "")
    script_tags = "".join(f"<script>{s}</script>\n" for s in scripts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{esc(policy)}">\n'
            f'<meta name="referrer" content="no-referrer">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n{''.join(head_bits)}\n"
            f"<style>{asset('assets/page.css')}{style}</style>\n</head><body>\n{body}\n{data_block}{script_tags}"
            "</body></html>\n")
