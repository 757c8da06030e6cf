"""`diffdepth demo` in a real browser: headless Debian Chromium driven by Selenium.

The app is served on a free loopback port with a tiny PrimeDepth saved by the make-tiny factory.
The browser uploads an image, waits for the depth, fetches the .npy download, then uploads a
corrupt file and reads the one-line message; the server must still answer afterwards.
Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`, done by
.ci/run); without them this test fails and says so.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("DIFFDEPTH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DIFFDEPTH_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOT = os.environ.get("DIFFDEPTH_DEMO_SCREENSHOT")  # also save the page here (README's image)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"{path} not found: the browser test needs Debian's chromium and chromium-driver "
                        "(apt-get install -y chromium chromium-driver; .ci/run does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from diffdepth.demo import Choice, DemoBackend, build_app
    from diffdepth.methods.primedepth.model import PrimeDepth

    root = tmp_path_factory.mktemp("demo")
    PrimeDepth.make_tiny(seed=0).save_pretrained(root / "tiny-pd")
    backend = DemoBackend([Choice("primedepth", str(root / "tiny-pd"))], device="cpu", work_dir=str(root / "work"))
    backend.preload()
    app = build_app(backend)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               max_file_size="5mb")
    try:
        yield f"http://127.0.0.1:{port}/", root, backend
    finally:
        app.close()
        backend.close()


def _upload_and_run(driver, path: Path):
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "image-input")
    clear = box.find_elements(By.CSS_SELECTOR, "button[aria-label='Clear']")
    if clear:
        clear[0].click()
    _upload(box, path)
    driver.find_element(By.ID, "run-image").click()


def _upload(box, path: Path):
    """Send ``path`` to the file input inside ``box``; returns once the component lists the file."""
    from selenium.webdriver.common.by import By

    box.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))
    _wait(lambda: box.find_elements(By.CSS_SELECTOR, f"td.filename[aria-label='{path.name}']"),
          f"upload of {path.name} never showed")


def _open_tab(driver, tab: str, box_id: str):
    """Click the tab named ``tab``; returns its input component ``box_id`` once it is displayed."""
    from selenium.webdriver.common.by import By

    [t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.strip() == tab][0].click()
    return _wait(lambda: (lambda b: b if b.is_displayed() else None)(driver.find_element(By.ID, box_id)),
                 f"the {tab} tab did not open")


def _paste_and_run(driver, url: str, path: Path):
    """Put ``path``'s PNG bytes on the browser's clipboard and press the paste box's button."""
    import base64

    from selenium.webdriver.common.by import By

    origin = url.rstrip("/")
    driver.execute_cdp_cmd("Browser.grantPermissions", {"origin": origin, "permissions": [
        "clipboardReadWrite", "clipboardSanitizedWrite"]})
    written = driver.execute_async_script(
        "const done = arguments[1];"
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "navigator.clipboard.write([new ClipboardItem({'image/png': new Blob([bytes], {type: 'image/png'})})])"
        ".then(() => done('ok'), e => done(String(e)));", base64.b64encode(path.read_bytes()).decode())
    assert written == "ok", f"could not put the image on headless Chromium's clipboard: {written}"
    box = driver.find_element(By.ID, "image-paste")
    box.find_element(By.CSS_SELECTOR, "button[aria-label='Paste from clipboard']").click()
    _wait(lambda: [i for i in box.find_elements(By.TAG_NAME, "img") if driver.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", i)], "the pasted image never showed")
    driver.find_element(By.ID, "run-image").click()


def _status(driver, elem_id: str, must_contain: str) -> str:
    """The status text once the run finished (no progress overlay left) and it names ``must_contain``."""
    from selenium.webdriver.common.by import By

    def done():
        el = driver.find_element(By.ID, elem_id)
        trackers = el.find_elements(By.CSS_SELECTOR, "[data-testid='status-tracker']")
        text = el.text.strip()
        if any(t.text.strip() for t in trackers) or "processing" in text or must_contain not in text:
            return None
        return text

    return _wait(done, f"#{elem_id} never showed a finished status naming {must_contain!r}")


def _wait(cond, what: str, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = cond()
        except Exception:  # noqa: BLE001 — element not there yet / stale: retry
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(what)


def test_demo_in_browser(served, tmp_path):
    from selenium.webdriver.common.by import By

    url, root, backend = served
    w, h = 80, 56
    rng = np.random.default_rng(0)
    grad = np.linspace(0, 255, w, dtype=np.float64)[None, :, None] * np.ones((h, 1, 3))
    img = np.clip(grad + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    good = tmp_path / "room.png"
    Image.fromarray(img).save(good)
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(good.read_bytes()[:60])  # a PNG cut short

    driver = _browser()
    try:
        driver.get(url)
        _wait(lambda: driver.find_element(By.ID, "run-image"), "the app's page did not load")

        # 1. an image -> the depth in the slider and the downloads
        _upload_and_run(driver, good)
        status = _status(driver, "status", "px")
        assert "Error" not in status, status
        assert f"{w}x{h} px" in status and "affine_invariant_disparity" in status, status
        slider = driver.find_element(By.ID, "depth-slider")
        imgs = _wait(lambda: [i for i in slider.find_elements(By.TAG_NAME, "img")
                              if i.get_attribute("src") and driver.execute_script(
                                  "return arguments[0].complete && arguments[0].naturalWidth", i)],
                     "the depth image never appeared")
        assert len(imgs) == 2  # input | colourised depth
        sizes = [driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", i)
                 for i in imgs]
        assert all(s == [w, h] for s in sizes), sizes
        links = _wait(lambda: [a.get_attribute("href") for a in
                               driver.find_elements(By.CSS_SELECTOR, "#downloads a")
                               if (a.get_attribute("href") or "").split("?")[0].endswith(".npy")],
                      "no .npy download link")
        data = urllib.request.urlopen(links[0], timeout=30).read()
        depth = np.load(io.BytesIO(data), allow_pickle=False)
        assert depth.shape == (h, w) and depth.dtype == np.float32 and np.isfinite(depth).all()
        assert float(depth.std()) > 0
        # the page shows the input and exactly the colourised prediction that was downloaded
        from diffdepth.io.export import colorize

        shown = [np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(i.get_attribute("src"), timeout=30).read()))
                            .convert("RGB")) for i in imgs]
        np.testing.assert_array_equal(shown[0], img)
        np.testing.assert_array_equal(shown[1], colorize(depth, "affine_invariant_disparity"))
        # the download is the prediction the server made (same bytes as its exporter wrote)
        served_npy = sorted((root / "work").rglob("room.npy"))
        assert served_npy and np.array_equal(np.load(served_npy[-1]), depth)
        glb = _wait(lambda: [a.get_attribute("href") for a in driver.find_elements(
            By.CSS_SELECTOR, "#point-cloud a[data-testid='model3d-download-link']")
            if (a.get_attribute("href") or "").endswith(".glb")], "the point cloud never reached the 3D view")
        assert urllib.request.urlopen(glb[0], timeout=30).read(4) == b"glTF"
        shot = tmp_path / "demo.png"
        driver.save_screenshot(str(shot))
        if SCREENSHOT:
            shutil.copy(shot, SCREENSHOT)
        with Image.open(shot) as im:
            assert im.size[0] > 0

        # 1b. the same image pasted from the clipboard (headless Chromium's own clipboard, with the
        # clipboard permission granted over CDP) -> the same depth, downloads named pasted.*
        _paste_and_run(driver, url, good)
        assert not driver.find_elements(By.CSS_SELECTOR, "#image-input td.filename")  # the paste cleared the upload
        pasted = _wait(lambda: [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#downloads a")
                                if (a.get_attribute("href") or "").split("?")[0].endswith("/pasted.npy")],
                       "no pasted.npy download after pasting")
        assert f"{w}x{h} px" in _status(driver, "status", "px")
        np.testing.assert_array_equal(np.load(io.BytesIO(urllib.request.urlopen(pasted[0], timeout=30).read())), depth)

        # 2. a corrupt upload (it clears the pasted image) -> the reader's one-line message, no traceback
        _upload_and_run(driver, corrupt)
        msg = _status(driver, "status", "broken.png")
        assert msg.startswith("Error: cannot read image broken.png: file is truncated or corrupt"), msg
        assert "\n" not in msg and "Traceback" not in driver.page_source

        # 3. the server keeps serving: the good image again
        _upload_and_run(driver, good)
        assert "Error" not in _status(driver, "status", "affine_invariant_disparity")

        # 4. the video tab: per-frame depth -> .npz download with one map per frame
        from diffdepth.io.video import VideoWriter

        clip = tmp_path / "clip.mp4"
        with VideoWriter(clip, fps=5) as vw:
            for i in range(3):
                vw.write(np.roll(img, 7 * i, axis=1))
        _upload(_open_tab(driver, "Video", "video-input"), clip)
        driver.find_element(By.ID, "run-video").click()
        npz = _wait(lambda: [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#video-downloads a")
                             if (a.get_attribute("href") or "").endswith(".npz")], "no .npz download for the video")
        frames = np.load(io.BytesIO(urllib.request.urlopen(npz[0], timeout=30).read()))
        assert frames["depth"].shape == (3, h, w)
        assert _status(driver, "video-status", "frames") == "3 frames."

        # 5. the compare tab: two models (here the same one twice) on one image
        _upload(_open_tab(driver, "Compare", "compare-input"), good)
        driver.find_element(By.ID, "run-compare").click()
        assert _status(driver, "compare-status", "primedepth").splitlines() == ["primedepth: affine_invariant_disparity"] * 2
    finally:
        driver.quit()
    _check_bad_uploads(backend, tmp_path)  # the same server's backend (one tiny model per run)


def test_glb_holds_the_ply_points(tmp_path):
    """The 3D view's .glb carries the PLY export's points (axes flipped to glTF's) and colours."""
    import json
    import struct

    from diffdepth.demo.glb import save_glb
    from diffdepth.geometry import intrinsics_from_fov
    from diffdepth.io.export import read_ply, save_ply

    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 4.0, (6, 5)).astype(np.float32)
    depth[2, 3] = 0.0  # invalid: left out of both
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    K = intrinsics_from_fov(5, 6, 60.0)
    ply = read_ply(save_ply(tmp_path / "c.ply", depth, rgb, K, kind="metric_depth"))
    data = (save_glb(tmp_path / "c.glb", depth, rgb, K, "metric_depth")).read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    jlen, jtype = struct.unpack_from("<I4s", data, 12)
    gltf = json.loads(data[20:20 + jlen])
    blen, btype = struct.unpack_from("<I4s", data, 20 + jlen)
    assert (jtype, btype) == (b"JSON", b"BIN\0")
    binary = data[28 + jlen:28 + jlen + blen]
    n = gltf["accessors"][0]["count"]
    assert n == 29 == len(ply.points) and gltf["meshes"][0]["primitives"][0]["mode"] == 0  # POINTS
    pts = np.frombuffer(binary[:12 * n], dtype="<f4").reshape(n, 3)
    cols = np.frombuffer(binary[12 * n:16 * n], dtype=np.uint8).reshape(n, 4)
    np.testing.assert_allclose(pts, ply.points * np.array([1, -1, -1], np.float32), rtol=1e-6)
    np.testing.assert_array_equal(cols[:, :3], ply.colors)
    assert (cols[:, 3] == 255).all()
    np.testing.assert_allclose(gltf["accessors"][0]["min"], pts.min(0), rtol=1e-6)


def test_demo_cli_flags(capsys):
    """--method/--checkpoint pair up; a mismatch or an unusable checkpoint stops before serving, in one line."""
    from diffdepth.cli import main
    from diffdepth.demo import Choice, parse_choices

    assert parse_choices(["marigold", "primedepth"], ["a", "b"]) == [Choice("marigold", "a"), Choice("primedepth", "b")]
    assert parse_choices(["primedepth"], ["a", "b"]) == [Choice("primedepth", "a"), Choice("primedepth", "b")]
    assert parse_choices([], ["a"]) == [Choice(None, "a")]
    assert parse_choices(["marigold"], []) == [Choice("marigold", None)]
    assert main(["demo", "--method", "marigold", "--method", "primedepth", "--checkpoint", "x", "--checkpoint", "y",
                 "--checkpoint", "z"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffdepth demo: error: got 2 --method and 3 --checkpoint flags") and "\n" not in err
    assert main(["demo", "--checkpoint", "no/such-model-here"]) == 2
    assert capsys.readouterr().err.strip() == ("diffdepth demo: error: pass --method when --checkpoint is a hub id "
                                               "(no/such-model-here is not a local folder)")


def _check_bad_uploads(backend, tmp_path):
    """Too small, too large, not an image, empty: the library's messages, naming the upload's file name only."""
    import struct
    import zlib

    from diffdepth.errors import InputError

    model = backend.choices[0]
    small = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(small)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"  # a header claiming 20000x10000 px: Pillow's decompression-bomb limit
    ihdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 0, 0, 0, 0)
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
        for tag, data in ((b"IHDR", ihdr), (b"IEND", b""))))
    expected = {small: "tiny.png: image is 6x4 px; primedepth needs at least",
                huge: "cannot read image huge.png: too large",
                notes: "cannot read image notes.txt: not an image file",
                empty: "cannot read image empty.jpg: file is empty (0 bytes)"}
    for path, start in expected.items():
        with pytest.raises(InputError) as err:
            backend.predict_image(str(path), model.method, model.checkpoint)
        assert str(err.value).startswith(start) and str(tmp_path) not in str(err.value), str(err.value)
    # options the method does not take are reported, not passed (PrimeDepth has no steps/ensembles)
    good = tmp_path / "room.png"
    _check_paste_equals_upload(backend, good)
    r = backend.predict_image(str(good), model.method, model.checkpoint,
                              {"steps": 4, "ensemble_size": 3, "seed": 2, "flip": True})
    assert r.ignored_options == ["ensemble_size", "steps"]
    assert sorted(r.files) == ["glb", "npy", "ply", "png16"] and r.uncertainty_u8 is None
    # the page names the intrinsics the PLY was written with
    assert f"intrinsics: {r.intrinsics}\n" in r.files["ply"].read_bytes().split(b"end_header")[0].decode()


def _check_paste_equals_upload(backend, good: Path):
    """A pasted image (the [H,W,3] uint8 array gradio hands over) gives exactly the uploaded file's
    outputs, under the name pasted.*; a bad pasted array gets a one-line message naming pasted.png."""
    from diffdepth.errors import InputError

    model = backend.choices[0]
    arr = np.asarray(Image.open(good).convert("RGB"))
    up = backend.predict_image(str(good), model.method, model.checkpoint, cmap="turbo")
    pa = backend.predict_image(arr, model.method, model.checkpoint, cmap="turbo")
    assert sorted(pa.files) == sorted(up.files) == ["glb", "npy", "ply", "png16"]
    for key, path in pa.files.items():
        assert path.name == "pasted" + up.files[key].name[len("room"):], (path, up.files[key])
        assert path.read_bytes() == up.files[key].read_bytes(), key
    np.testing.assert_array_equal(pa.rgb_u8, arr)
    np.testing.assert_array_equal(pa.color_u8, up.color_u8)
    assert (pa.kind, pa.png16_encoding, pa.intrinsics) == (up.kind, up.png16_encoding, up.intrinsics)
    with pytest.raises(InputError) as err:
        backend.predict_image(arr[:5, :7], model.method, model.checkpoint)
    assert str(err.value).startswith("pasted.png: image is 7x5 px; primedepth needs at least"), str(err.value)
    with pytest.raises(InputError) as err:
        backend.predict_image(np.zeros((40, 40, 5), np.uint8), model.method, model.checkpoint)
    assert str(err.value).startswith("pasted.png: expected an array [H,W]") and "\n" not in str(err.value)
