"""report.html in a real browser: headless Chromium (Debian's ``chromium``) renders PASS and FAIL.

Checks what a reader gets: the screenshot is not blank, and the verdict, the one-line reason and the
rollback sit in the first screen (1280x900). Positions come from a test-only copy of the report with a
small script appended (the report itself carries no script); ``--dump-dom`` prints them.
Skipped only where Chromium is missing (``scripts/ensure-system-deps.sh`` installs it, so CI has it).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from migsafe.report import render_html
from migsafe.result import Result

pytestmark = pytest.mark.slow

EVENTS = Path(__file__).resolve().parent.parent / "events"
WIDTH, HEIGHT = 1280, 900
PROBE = """<script>
const out = {height: window.innerHeight};
for (const [k, sel] of [["verdict", ".verdict"], ["why", "p.why"], ["rollback", "p.rollback"],
                        ["command", "#top pre"], ["details", "h2"]]) {
  const el = document.querySelector(sel);
  if (el) { const r = el.getBoundingClientRect(); out[k] = [r.top, r.bottom]; }
}
document.body.setAttribute("data-positions", JSON.stringify(out));
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "chromium is not installed here (scripts/ensure-system-deps.sh installs Debian's chromium)"
        )
    return found


def _run(binary: str, *args: str) -> str:
    proc = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={WIDTH},{HEIGHT}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _png_rows(path: Path) -> list[bytes]:
    """Decoded scanlines of an 8-bit RGB/RGBA PNG (enough to tell a blank page from a report)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8
            channels = {2: 3, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return rows


@pytest.mark.parametrize("name", ["result_pass.json", "result_fail.json"])
def test_report_renders_with_verdict_and_rollback_in_the_first_screen(name: str, tmp_path: Path) -> None:
    # Given
    binary = _chromium()
    result = Result.model_validate_json((EVENTS / name).read_text())
    page = render_html(result)
    report = tmp_path / "report.html"
    report.write_text(page)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    # When
    shot = tmp_path / "shot.png"
    _run(binary, f"--screenshot={shot}", report.as_uri())
    dom = _run(binary, "--virtual-time-budget=2000", "--dump-dom", probe.as_uri())
    # Then: something is drawn (a blank page is one colour throughout)
    rows = _png_rows(shot)
    assert len(rows) == HEIGHT
    assert len(set(rows)) > 50
    assert len({px for row in rows[:200] for px in row[::97]}) > 5
    # and the verdict, the reason and the rollback are above the fold
    m = re.search(r'data-positions="([^"]*)"', dom)
    assert m, dom[-500:]
    pos = json.loads(html.unescape(m.group(1)))
    screen = pos["height"]  # the viewport of the 1280x900 window
    assert 600 <= screen <= HEIGHT
    for key in ("verdict", "why", "rollback"):
        assert pos[key][0] >= 0 and pos[key][1] <= screen, (key, pos)
    if "command" in pos:
        assert pos["command"][1] <= screen, pos
    assert result.verdict in dom
