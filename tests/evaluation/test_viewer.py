"""The offline 3D viewer of exported meshes (avatar3d.evaluation.viewer, export-mesh --html).

Default suite (no browser): the page and its script are in place, the page names no URL but the script beside
it, the embedded mesh decodes to the GLB's bytes, a missing install is one clear error. Slow (needs Chromium,
Debian's package, and the npm install): the page opens from file:// in headless Chromium with WebGL on
SwiftShader, logs no console error, paints a non-blank canvas, and a scripted camera turn changes the picture.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages ending
in a NUL byte on fds 3 and 4), standard library only.
"""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from avatar3d.evaluation import viewer
from avatar3d.evaluation.viewer import VIEWER_SCRIPT, ViewerNotInstalled, write_viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# WebGL without a GPU: ANGLE on SwiftShader (Chromium refuses software WebGL unless told it is wanted).
GL_FLAGS = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]

installed = pytest.mark.skipif(viewer.viewer_script() is None,
                               reason=f"viewer not installed: {viewer.INSTALL_HINT}")


def two_tone_glb() -> bytes:
    """A lumpy sphere, red on its left (+x), blue on its right, so a turn of the camera changes the picture."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    v = sphere.vertices
    sphere.vertices = v * (1 + 0.25 * np.sin(5 * v[:, 1:2] / 0.3))  # bumps, so shading varies too
    rgba = np.where(v[:, :1] > 0, [[220, 40, 40, 255]], [[40, 60, 220, 255]]).astype(np.uint8)
    rgba[v[:, 2] > 0.2] = [250, 220, 60, 255]  # a yellow "face" towards +z
    mesh = trimesh.Trimesh(sphere.vertices, sphere.faces, vertex_colors=rgba, process=False)
    return mesh.export(file_type="glb")


def embedded_glb(page_text: str) -> bytes:
    (url,) = re.findall(r'src="data:model/gltf-binary;base64,([A-Za-z0-9+/=]+)"', page_text)
    return base64.b64decode(url)


def urls(page_text: str) -> list[str]:
    """Every src / href / url(...) of the page (data: URLs shortened)."""
    found = re.findall(r'(?:src|href|poster)\s*=\s*"([^"]*)"', page_text) + re.findall(r"url\(([^)]*)\)", page_text)
    return [u[:30] if u.startswith("data:") else u for u in found]


# -- default suite -----------------------------------------------------------------------------

@installed
def test_page_and_script_are_in_place_and_the_page_is_offline(tmp_path):
    glb = two_tone_glb()
    page, script = write_viewer(tmp_path / "avatar.html", glb, "avatar seed 0", "painted by the procedural painter")
    assert page == tmp_path / "avatar.html" and script == tmp_path / VIEWER_SCRIPT
    assert script.read_bytes() == viewer.viewer_script().read_bytes() and script.stat().st_size > 100_000
    text = page.read_text()
    assert embedded_glb(text) == glb  # the mesh is in the page, byte for byte
    links = urls(text)
    assert VIEWER_SCRIPT in links
    assert not [u for u in links if not u.startswith("data:") and u != VIEWER_SCRIPT]  # nothing else is loaded
    assert not re.search(r"https?://", text)  # no CDN, no URL at all
    assert "painted by the procedural painter" in text and "<model-viewer" in text
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # written through atomic temporaries


@installed
def test_second_page_leaves_the_same_script_alone(tmp_path):
    _, script = write_viewer(tmp_path / "a.html", two_tone_glb(), "a", "label")
    before = script.stat().st_mtime_ns
    write_viewer(tmp_path / "b.html", two_tone_glb(), "b", "label")
    assert script.stat().st_mtime_ns == before


def test_missing_install_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(viewer.VIEWER_ENV, str(tmp_path / "nowhere"))
    assert viewer.viewer_script() is None
    with pytest.raises(ViewerNotInstalled) as err:
        write_viewer(tmp_path / "a.html", two_tone_glb(), "a", "label")
    message = str(err.value)
    assert "\n" not in message and "make install" in message and "npm ci" in message
    assert not (tmp_path / "a.html").exists()


def test_bytes_that_are_not_a_glb_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a GLB"):
        viewer.glb_data_url(b"ply\nformat ascii 1.0\n")


def test_viewer_dir_env_points_at_another_install(tmp_path, monkeypatch):
    fake = tmp_path / "v" / viewer.PACKAGE_FILE
    fake.parent.mkdir(parents=True)
    fake.write_text("/* model-viewer */")
    monkeypatch.setenv(viewer.VIEWER_ENV, str(tmp_path / "v"))
    assert viewer.viewer_script() == fake
    _, script = write_viewer(tmp_path / "out" / "m.html", two_tone_glb(), "m", "label")
    assert script.read_text() == "/* model-viewer */"


# -- export-mesh --html ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    from tests.evaluation.helpers import write_micro_snapshot

    return write_micro_snapshot(tmp_path_factory.mktemp("snap") / "g.safetensors")


def _export(snapshot, out: Path, *extra: str) -> int:
    from avatar3d.cli import main
    from tests.evaluation.helpers import micro_generator, surface_iso

    return main(["export-mesh", "--model", str(snapshot), "--seed", "0", "--out", str(out), "--resolution", "20",
                 "--iso", str(surface_iso(micro_generator())), *extra])


@installed
def test_export_mesh_html_writes_the_viewer_beside_the_mesh(snapshot, tmp_path, capsys):
    out = tmp_path / "avatar.glb"
    assert _export(snapshot, out, "--html") == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avatar.glb", "avatar.html", "avatar_preview.png",
                                                         VIEWER_SCRIPT]
    text = (tmp_path / "avatar.html").read_text()
    assert embedded_glb(text) == out.read_bytes()  # the very file export-mesh wrote
    assert not re.search(r"https?://", text)
    assert 'poster="avatar_preview.png"' in text and "seed 0" in text
    assert "not recorded beside this model" in text  # a bare snapshot: no run folder says what painted its data
    assert str(tmp_path / "avatar.html") in capsys.readouterr().out


@installed
def test_export_mesh_html_of_a_ply_embeds_the_same_mesh_as_glb(snapshot, tmp_path, capsys):
    out = tmp_path / "avatar.ply"
    assert _export(snapshot, out, "--html", "--preview", "none") == 0, capsys.readouterr().err
    glb = trimesh.load(io.BytesIO(embedded_glb((tmp_path / "avatar.html").read_text())), file_type="glb",
                       force="mesh", process=False)
    ply = trimesh.load(out, force="mesh", process=False)
    assert glb.vertices.shape == ply.vertices.shape and np.array_equal(glb.faces, ply.faces)
    assert np.allclose(glb.vertices, ply.vertices, atol=1e-6)
    assert "poster=" not in (tmp_path / "avatar.html").read_text()


@installed
def test_export_mesh_html_keeps_an_earlier_page_unless_overwrite(snapshot, tmp_path, capsys):
    out = tmp_path / "avatar.glb"
    (tmp_path / "avatar.html").write_text("an earlier page")
    assert _export(snapshot, out, "--html") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"avatar3d export-mesh: error: --out: {tmp_path / 'avatar.html'} already exists (an earlier "
                   "result); pass --overwrite to replace it, or another --out")
    assert not out.exists()  # refused before any work
    assert _export(snapshot, out, "--html", "--overwrite") == 0
    assert embedded_glb((tmp_path / "avatar.html").read_text()) == out.read_bytes()


def test_export_mesh_html_without_the_viewer_is_one_line_before_any_work(snapshot, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setenv(viewer.VIEWER_ENV, str(tmp_path / "nowhere"))
    assert _export(snapshot, tmp_path / "avatar.glb", "--html") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("avatar3d export-mesh: error: --html: the 3D viewer is not installed")
    assert "make install" in line and line.endswith("or leave out --html")
    assert list(tmp_path.iterdir()) == []


def test_painter_is_read_from_the_snapshots_run_folder(tmp_path):
    from avatar3d.datagen.procedural import PAINTER_ID

    data = tmp_path / "dataset"
    data.mkdir()
    (data / "dataset_card.json").write_text(json.dumps({"model_ids": {"base_model": PAINTER_ID}}))
    run = tmp_path / "gan" / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  path: {data}\n")
    assert viewer.snapshot_painter(str(run / "network-snapshot-final.safetensors")) == PAINTER_ID
    assert "procedural painter" in viewer.painter_note(PAINTER_ID)
    assert viewer.snapshot_painter("models:/avatar3d-gan/1") == ""


# -- the browser -----------------------------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, user_dir: Path, size=(900, 900)):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Moved above fd 100 first, so that neither end already sits on fd 3 or 4 (the shell would close it).
        to_chrome_r, from_chrome_w = (self._high(fd) for fd in (to_chrome_r, from_chrome_w))
        args = [CHROMIUM, "--headless", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={user_dir}",
                f"--window-size={size[0]},{size[1]}", "--hide-scrollbars", *GL_FLAGS]
        # Put the pipe ends on fds 3 and 4 of the child, where --remote-debugging-pipe looks for them.
        shell = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", shell, *args], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)

    @staticmethod
    def _high(fd: int) -> int:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(fd)
        return high

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()})")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: bool = False, timeout: float = 60, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout:.0f} s for {expression}")

    def screenshot(self, clip: dict | None = None) -> np.ndarray:
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        png = base64.b64decode(self.send("Page.captureScreenshot", session=True, **params)["data"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads, blocked requests)."""
        found = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + json.dumps(p["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                found.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return found

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


# The viewer's box in the viewport (where mouse events go); screenshots clip in page coordinates (+ scroll).
VIEWER_BOX = """(() => { const r = document.querySelector("model-viewer").getBoundingClientRect();
  return {x: r.x, y: r.y, width: r.width, height: r.height, scrollX: window.scrollX, scrollY: window.scrollY}; })()"""


def page_clip(box: dict) -> dict:
    return {"x": box["x"] + box["scrollX"], "y": box["y"] + box["scrollY"], "width": box["width"],
            "height": box["height"]}


def turn_camera(browser: Chromium, orbit: str) -> None:
    browser.evaluate(f"""(async () => {{ const mv = document.querySelector("model-viewer");
        mv.cameraOrbit = "{orbit}"; mv.jumpCameraToGoal();
        await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))); }})()""")
    time.sleep(1.0)  # SwiftShader paints a frame in well under a second; leave room on a busy machine


def drag(browser: Chromium, box: dict, dx: float) -> None:
    """A person's drag across the viewer: press, move ``dx`` pixels sideways, release. Pressed off the centre:
    model-viewer's (invisible) pan-target dot sits on the centre and takes a press there."""
    x, y = box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6
    browser.send("Input.dispatchMouseEvent", session=True, type="mousePressed", x=x, y=y, button="left",
                 buttons=1, clickCount=1)
    for i in range(1, 11):
        browser.send("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=x + dx * i / 10, y=y,
                     button="left", buttons=1)
        time.sleep(0.03)
    browser.send("Input.dispatchMouseEvent", session=True, type="mouseReleased", x=x + dx, y=y, button="left",
                 clickCount=1)
    time.sleep(1.5)  # the camera eases to where the drag left it


def look_at_page(page: Path, shots: Path | None = None) -> dict:
    """Open ``page`` in headless Chromium, wait for the mesh, screenshot it from the front, after setting the
    camera 90 degrees round and after a mouse drag; -> {"errors", "status", "front", "turned", "dragged",
    "page"} (images as arrays)."""
    user_dir = Path(tempfile.mkdtemp(prefix="avatar3d-chromium-"))
    browser = Chromium(user_dir)
    try:
        browser.send("Page.navigate", session=True, url=page.resolve().as_uri())
        status = browser.wait_for('''(() => { const s = [...document.querySelectorAll("model-viewer")]
            .map(m => m.dataset.status); return s.length && s.every(x => x) ? s : null; })()''')
        browser.evaluate("document.querySelector('model-viewer').scrollIntoView()")
        box = browser.evaluate(VIEWER_BOX)
        turn_camera(browser, "0deg 75deg auto")
        front = browser.screenshot(page_clip(box))
        turn_camera(browser, "90deg 75deg auto")
        turned = browser.screenshot(page_clip(box))
        drag(browser, box, -box["width"] / 3)
        dragged = browser.screenshot(page_clip(box))
        whole = browser.screenshot()
        if shots:
            for name, image in (("front", front), ("turned", turned), ("dragged", dragged), ("page", whole)):
                Image.fromarray(image).save(shots / f"{page.stem}_{name}.png")
        return {"errors": browser.errors(), "status": status, "front": front, "turned": turned,
                "dragged": dragged, "page": whole}
    finally:
        browser.close()
        shutil.rmtree(user_dir, ignore_errors=True)


def painted(image: np.ndarray) -> float:
    """Share of pixels that are not the viewer's flat background colour."""
    background = np.median(image.reshape(-1, 3), axis=0)
    return float((np.abs(image.astype(int) - background).sum(-1) > 30).mean())


@pytest.mark.slow
@installed
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_page_shows_the_mesh_in_chromium_and_turns(tmp_path):
    page, _ = write_viewer(tmp_path / "avatar.html", two_tone_glb(), "avatar seed 0", "a test mesh")
    seen = look_at_page(page, Path(os.environ["AVATAR3D_VIEWER_SHOTS"]) if "AVATAR3D_VIEWER_SHOTS" in os.environ
                        else None)
    assert seen["errors"] == []
    assert seen["status"] == ["loaded"]
    front, turned, dragged = seen["front"], seen["turned"], seen["dragged"]
    assert front.shape[0] > 300
    for image in (front, turned, dragged):
        assert 0.05 < painted(image) < 0.95  # the mesh covers part of the canvas, the background the rest
    assert changed(front, turned) > 0.05 and changed(turned, dragged) > 0.05
    # glTF's frame is the project's: the yellow face (+z) looks at the default camera, and yaw +90 sees the
    # subject's left (+x, red).
    assert colour_at_centre(front) == "yellow" and colour_at_centre(turned) == "red"


def changed(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a.astype(int) - b.astype(int)).sum(-1) > 30).mean())


def colour_at_centre(image: np.ndarray) -> str:
    h, w, _ = image.shape
    r, g, b = np.median(image[h // 2 - 10:h // 2 + 10, w // 2 - 10:w // 2 + 10].reshape(-1, 3), axis=0)
    if r > 150 and g > 150 and b < 140:
        return "yellow"
    if r > 150 and g < 120 and b < 120:
        return "red"
    if b > 150 and r < 120:
        return "blue"
    return f"rgb({r:.0f}, {g:.0f}, {b:.0f})"
