"""The CLI summary of an atlas (issue 19, "Terminal output"): an atlas is untrusted input.

A crafted atlas (the shipped gemma3 atlas with a model name holding rich markup and an OSC-8 hyperlink escape, a
detector renamed to markup with an ANSI colour code, a skip reason with a cursor-moving escape) is printed by the
summary table and by ``headatlas report``: every string prints literally (no link, no style, no escape byte reaches
the terminal), and at 80 columns each detector takes exactly one line.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import headatlas.cli
from headatlas import Atlas
from headatlas.cli.common import safe, terminal_text
from headatlas.cli.scan import summary_table

GEMMA_ATLAS = Path(__file__).resolve().parents[1] / "docs" / "atlas-gemma3-270m" / "atlas.json"
MODEL = "[link=https://evil.example]gemma[/link] \x1b]8;;https://evil.example\x07click\x1b]8;;\x07"
DETECTOR = "[bold red]x[/]\x1b[31mred"
REASON = "needs \x1b[2J\x1b[Hmore [/] room"


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> tuple[Atlas, Path]:
    doc = json.loads(GEMMA_ATLAS.read_text())
    doc["model"]["name"] = MODEL
    first = doc["detectors"][0]
    first["meta"]["name"] = first["result"]["name"] = DETECTOR
    skipped = copy.deepcopy(doc["detectors"][1])
    skipped["meta"]["name"] = skipped["result"]["name"] = "skipped_one"
    skipped["result"]["skipped"] = REASON
    doc["detectors"].append(skipped)
    path = tmp_path_factory.mktemp("crafted") / "atlas.json"
    path.write_text(json.dumps(doc))
    return Atlas.load(path), path


def _render(atlas: Atlas, width: int = 80) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(summary_table(atlas, 5))
    return out.getvalue()


def _check(text: str, atlas: Atlas, width: int = 80) -> None:
    assert "\x1b" not in text and "\x07" not in text, "a raw escape reached the terminal"
    assert "[link=https://evil.example]gemma[/link]" in text           # markup printed literally
    assert "[bold red]x[/]" in text and "\\x1b[2J" in text              # markup and escapes shown, not acted on
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), max(map(len, lines))

    def row_of(line: str, name: str) -> bool:
        first = line[:21].strip()            # the detector column: 20 characters after the table's edge
        shown = terminal_text(name)
        return first == shown or (first.endswith("…") and shown.startswith(first[:-1]))

    for name in atlas.detectors:
        rows = [line for line in lines if row_of(line, name)]
        assert len(rows) == 1, (name, rows)
    # nothing but the title, the header, its rule, the rows and the caption: one line per detector
    assert len([line for line in lines if line.strip()]) == len(atlas.detectors) + 4


def test_summary_is_literal_and_one_line_per_detector_at_80_columns(crafted):
    atlas, _ = crafted
    _check(_render(atlas), atlas)


def test_wide_terminals_keep_one_line_per_detector(crafted):
    atlas, _ = crafted
    _check(_render(atlas, 200), atlas, 200)


def test_report_command_prints_the_crafted_atlas_literally(crafted, tmp_path):
    atlas, path = crafted
    res = CliRunner().invoke(headatlas.cli.app, ["report", str(path), "--out", str(tmp_path / "r.html")],
                             env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    _check(res.stdout, atlas)


def test_safe_escapes_markup_and_controls():
    assert safe("[b]x[/b]") == "\\[b]x\\[/b]"
    assert terminal_text("a\x1b[0mb\u202ec\nd") == "a\\x1b[0mb\\u202ec\\x0ad"
    assert terminal_text("plain L3H2 (q 0.01)") == "plain L3H2 (q 0.01)"
