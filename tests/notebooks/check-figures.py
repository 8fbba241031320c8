"""check-figures.py — does every figure of a rendered notebook render?

Usage: check-figures.py NOTEBOOK.ipynb PAGE.html SCREENSHOT.png

Counts the notebook's figure cells (code cells that call display-figure or
whose value is a plot), checks that the page links one non-empty SVG per
figure output and at least one per figure cell, then opens the page in
headless Chromium twice: once to read where each figure landed (a script
added to a copy of the page writes their boxes into the DOM), once to take
a screenshot of the whole page (kept as SCREENSHOT). Each figure's box must
hold non-blank pixels. Exit status 0 when all is well.
"""
import json
import os
import re
import struct
import subprocess
import sys
import zlib

notebook, page, shot = sys.argv[1:4]
chromium = os.environ.get("CHROMIUM", "chromium")
failures = 0


def check(what, ok, detail=""):
    global failures
    print(("PASS: " if ok else "FAIL: ") + what + ("" if ok else "  " + str(detail)))
    failures += 0 if ok else 1


def read_png(path):
    """Width, height, channels and the raw rows of an 8-bit PNG."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
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
        rows.append(line)
        prev = line
    return width, height, channels, rows


def headless(*args):
    return subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120)


# the figure cells of the notebook, and the figures the page links
nb = json.load(open(notebook))
figure_cells = [c for c in nb["cells"] if c["cell_type"] == "code"
                and re.search(r"display-figure|^\(plot-", "".join(c["source"]), re.M)]
html = open(page).read()
images = re.findall(r'<img class="moelab-figure" src="([^"]+)"', html)
name = os.path.basename(notebook)
check("%s: %d figure cells, %d figures" % (name, len(figure_cells), len(images)),
      len(figure_cells) > 0 and len(images) >= len(figure_cells), images)
here = os.path.dirname(page)
for src in images:
    path = os.path.join(here, src)
    text = open(path).read() if os.path.exists(path) else ""
    check("%s: non-empty SVG" % src, "<svg" in text and "gnuplot_plot_1" in text, len(text))

# where the figures are on the page
probe = os.path.join(here, "probe-" + os.path.basename(page))
with open(probe, "w") as f:
    f.write(html.replace("</body>", """<script>
window.addEventListener('load', function () {
  var boxes = Array.prototype.map.call(document.querySelectorAll('img.moelab-figure'), function (i) {
    var r = i.getBoundingClientRect();
    return [Math.round(r.left), Math.round(r.top + window.scrollY), Math.round(r.width),
            Math.round(r.height), i.naturalWidth];
  });
  var pre = document.createElement('pre');
  pre.id = 'moelab-boxes';
  pre.textContent = JSON.stringify({boxes: boxes, height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
});
</script></body>"""))
r = headless("--window-size=1000,1000", "--dump-dom", "file://" + os.path.abspath(probe))
m = re.search(r'<pre id="moelab-boxes">(.*?)</pre>', r.stdout)
check("%s: the page loads in Chromium" % name, m is not None, r.stderr[-500:])
if not m:
    sys.exit(1)
layout = json.loads(m.group(1).replace("&quot;", '"'))
height = min(layout["height"] + 40, 16000)
r = headless("--window-size=1000,%d" % height, "--screenshot=" + os.path.abspath(shot),
             "file://" + os.path.abspath(probe))
os.remove(probe)
check("%s: screenshot %s" % (name, shot), os.path.exists(shot), r.stderr[-500:])
width, h, channels, rows = read_png(shot)
for n, (x, y, w, hh, natural) in enumerate(layout["boxes"]):
    inked = total = 0
    for yy in range(max(0, y), min(h, y + hh)):
        row = rows[yy]
        for xx in range(max(0, x), min(width, x + w)):
            px = row[xx * channels:xx * channels + 3]
            total += 1
            inked += min(px) < 200
    check("%s: figure %d renders (%dx%d, %.1f%% inked)" % (name, n + 1, w, hh,
                                                          100.0 * inked / max(total, 1)),
          natural > 0 and total > 0 and inked > total * 0.01, (natural, total, inked))
sys.exit(1 if failures else 0)
