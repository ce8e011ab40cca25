"""Putting untrusted text into the HTML report safely.

An atlas is a shared file, so every string it holds (detector names, versions, descriptions,
details, string-valued extras, model info, settings, notes) is untrusted. The report places such
strings in exactly three ways, each with its own encoder:

- HTML text and attribute values: :func:`esc` (``html.escape`` with quotes);
- data for scripts: :func:`script_json`, JSON in a ``<script type="application/json">`` block in which
  ``<``, ``>``, ``&``, U+2028 and U+2029 are written as ``\\uXXXX`` escapes, so no string can close the
  block (``</script>``) or open a comment; scripts read it with ``JSON.parse`` and put strings into
  the page with ``textContent`` only;
- text inside plotly figures: titles and tick labels go through :func:`esc` here, then the figure travels as
  :func:`script_json` data; hover text is built by the page script from the embedded numbers, and every atlas
  string in it goes through the script's own ``esc`` first. Plotly draws such text into SVG, where the escaped
  entities show as text.

On top of that the page carries a Content-Security-Policy (:func:`csp`) that allows only the page's
own inline scripts, by hash: an injected ``<script>`` or ``onerror=`` handler would not run even if an
escape were missed, and ``connect-src 'none'`` forbids any network request.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from typing import Any

import numpy as np

# Plotly's config on every plot: no logo, no upload ("send to cloud" / "edit in chart studio"), no
# "link" text, and only mode-bar buttons that work offline (PNG download, zoom, pan, reset).
PLOTLY_CONFIG: dict[str, Any] = {
    "displaylogo": False,
    "showSendToCloud": False,
    "showEditInChartStudio": False,
    "showLink": False,
    "responsive": False,
    "modeBarButtons": [["toImage", "zoom2d", "pan2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "resetScale2d"]],
}

_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def esc(x: Any) -> str:
    """``x`` as HTML text or a quoted attribute value (``<>&"'`` escaped)."""
    return html.escape(str(x), quote=True)


def plain(x: Any) -> Any:
    """``x`` as plain JSON values: numpy scalars/arrays to Python, non-finite floats to ``None``,
    tuples to lists, non-string keys to strings; anything else to its ``str``."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.ndarray):
        return plain(x.tolist())
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return str(x)


def script_json(data: Any) -> str:
    """JSON of ``data`` (made :func:`plain` first) that is safe inside a ``<script>`` element."""
    text = json.dumps(plain(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, rep in _SCRIPT_ESCAPES.items():
        text = text.replace(ch, rep)
    return text


def script_hash(source: str) -> str:
    """The CSP source expression for one inline script: ``'sha256-<base64>'``."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def csp(script_sources: list[str]) -> str:
    """The page's Content-Security-Policy: nothing may load or connect anywhere; only the given inline
    scripts (by hash) run (none at all for an empty list); inline styles are allowed (plotly adds its own), images only as data: URLs
    (plotly's PNG download). ``'unsafe-eval'`` is absent: plotly.js does not need it for these traces."""
    hashes = " ".join(script_hash(s) for s in script_sources) or "'none'"
    return ("default-src 'none'; " f"script-src {hashes}; " "style-src 'unsafe-inline'; img-src data: blob:; "
            "font-src 'none'; connect-src 'none'; frame-src 'none'; object-src 'none'; base-uri 'none'; "
            "form-action 'none'")
