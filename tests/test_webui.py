"""webUI.py: the logic in-process, and the real page in headless Chromium.

The fast tests drive inference/webui_app.py with upstream's recorded mini
generator. The slow test starts `webUI.py` on a free local port with the tiny
model trained by train.py and drives the page with Debian's chromium and
chromedriver through selenium (`make browser` installs them); without them it
skips and says how to install them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile

import webUI
from core.errors import UserError
from inference.webui_app import (
    NO_MODEL,
    ConvertSettings,
    ModelCache,
    ModelChoice,
    convert_file,
    error_message,
    folder_model,
    model_folders,
    resolve_choice,
)
from preprocessing.runner import run_cli
from tests.helpers_model import REPO, TINY_ENCODER, UPSTREAM, shared_trained_model, sung_clip

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MINI_SR = 44100


@pytest.fixture(scope="module")
def mini_cache() -> ModelCache:
    return ModelCache(device="cpu", encoder_path=str(TINY_ENCODER))


MINI = ModelChoice(str(UPSTREAM / "mini_G.pth"), str(UPSTREAM / "mini_config.json"))


def test_model_folder_gives_newest_generator(tmp_path: Path) -> None:
    folder = tmp_path / "logs" / "alto"
    folder.mkdir(parents=True)
    for step in (0, 800, 96):
        (folder / f"G_{step}.pth").write_bytes(b"")
    (folder / "D_900.pth").write_bytes(b"")
    with pytest.raises(UserError, match="config.json"):
        folder_model(folder)
    (folder / "config.json").write_text("{}")
    assert folder_model(folder) == (folder / "G_800.pth", folder / "config.json")
    (tmp_path / "logs" / "empty").mkdir()
    assert model_folders(tmp_path / "logs") == [str(folder)]
    with pytest.raises(UserError, match="no G_"):
        folder_model(tmp_path / "logs" / "empty")
    with pytest.raises(UserError, match="no model loaded"):
        resolve_choice(None, None, None)
    with pytest.raises(UserError, match="a config alone is no model"):
        resolve_choice(str(folder), None, "config.json")
    # An uploaded model alone may carry its config: the choice leaves it to the file.
    assert resolve_choice(str(folder), "up/G_1.pth", None).config_path is None


def test_convert_twice_loads_once_and_keeps_length(
    mini_cache: ModelCache, tmp_path: Path
) -> None:
    # Voiced, silent, voiced: the slicer keeps pieces of 5 s or more apart.
    tone = sung_clip(5.5, 22050, f0=220.0)
    clip = np.concatenate([tone, np.zeros(22050, np.float32), tone])
    source = tmp_path / "take.flac"
    soundfile.write(source, clip, 22050)
    for transpose in (0, 12):
        shares: list[float] = []
        svc = mini_cache.get(MINI)
        out, rate, length = convert_file(
            svc, source, ConvertSettings(speaker="tenor", transpose=transpose), tmp_path / "out",
            progress=shares.append,
        )
        assert shares[0] == 0 and shares[-1] == 1 and shares == sorted(shares)
        assert len(shares) >= 3 and 0 < shares[1] < 1  # per piece, then the end
        audio, file_rate = soundfile.read(out)
        assert rate == file_rate == MINI_SR
        assert length == audio.shape[0] == 12 * MINI_SR  # the clip's 12 s at the model's rate
    assert mini_cache.loads == 1
    assert out.name == "take_12key_tenor.wav"


def test_cache_reloads_only_for_another_choice(tmp_path: Path) -> None:
    """Uploads win over the folder; a new cluster file or another model is a new load."""
    built: list[tuple[Any, ...]] = []

    class FakeSvc:
        def __init__(self, model: str, config: str, **options: Any) -> None:
            built.append((model, config, options["cluster_model_path"], options["device"]))
            self.unloaded = False

        def unload_model(self) -> None:
            self.unloaded = True

    cache = ModelCache(device="cpu", factory=FakeSvc)
    uploaded = resolve_choice(None, "up/G_5.pth", "up/config.json")
    assert (uploaded.model_path, uploaded.config_path) == ("up/G_5.pth", "up/config.json")
    first = cache.get(uploaded)
    assert cache.get(resolve_choice(None, "up/G_5.pth", "up/config.json")) is first
    with_cluster = cache.get(resolve_choice(None, "up/G_5.pth", "up/config.json", "k.pt"))
    assert with_cluster is not first and first.unloaded
    assert built == [("up/G_5.pth", "up/config.json", None, "cpu"),
                     ("up/G_5.pth", "up/config.json", "k.pt", "cpu")]
    assert cache.loads == 2 and cache.current is with_cluster


def test_user_mistakes_are_one_line_messages(mini_cache: ModelCache, tmp_path: Path) -> None:
    svc = mini_cache.get(MINI)
    text = tmp_path / "notes.txt"
    text.write_text("not a song\n")
    with pytest.raises(UserError, match="notes.txt: not an audio file") as bad_audio:
        convert_file(svc, text, ConvertSettings(speaker="tenor"), tmp_path)
    with pytest.raises(UserError, match="'soprano' is not in the config") as bad_speaker:
        convert_file(svc, text, ConvertSettings(speaker="soprano"), tmp_path)
    with pytest.raises(UserError, match="no input audio"):
        convert_file(svc, None, ConvertSettings(speaker="tenor"), tmp_path)
    wrong_config = ModelChoice(MINI.model_path, str(UPSTREAM / "mini2_config.json"))
    with pytest.raises(UserError) as bad_fit:
        mini_cache.get(wrong_config)
    for error in (bad_audio.value, bad_speaker.value, bad_fit.value):
        message = error_message(error)
        assert message.startswith("error: ") and "\n" not in message
    assert "mini_G.pth" in error_message(bad_fit.value)
    source = tmp_path / "take.wav"
    soundfile.write(source, sung_clip(0.3, MINI_SR), MINI_SR)
    svc = mini_cache.get(MINI)  # the failed load left no model: this loads again
    with pytest.raises(UserError, match="no cluster model or feature index") as no_cluster:
        convert_file(svc, source, ConvertSettings(speaker="tenor", cluster_ratio=0.5), tmp_path)
    assert "\n" not in error_message(no_cluster.value)
    assert error_message(RuntimeError("boom")).startswith("error: RuntimeError: boom")
    assert NO_MODEL in error_message(UserError(NO_MODEL))


def test_a_failing_conversion_is_a_message_and_the_page_keeps_converting(
    tmp_path: Path,
) -> None:
    """The page's own handler, called as gradio calls it: a conversion that raises (a GPU out
    of memory) is one line in the status box, frees the cached GPU memory, and the next
    conversion on the same page and model works."""
    from inference.webui_page import build_page

    class FlakySvc:
        target_sample = MINI_SR
        spk2id: ClassVar[dict[str, int]] = {"tenor": 0}
        runs = 0
        cleared = 0

        def __init__(self, *args: Any, **options: Any) -> None:
            pass

        def speaker_id(self, name: str) -> int:
            return self.spk2id[name]

        def convert_array(self, audio: np.ndarray, rate: int, *args: Any, **kw: Any) -> Any:
            FlakySvc.runs += 1
            if FlakySvc.runs == 1:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return np.zeros(MINI_SR // 2, np.float32)

        def clear_empty(self) -> None:
            FlakySvc.cleared += 1

    folder = tmp_path / "logs" / "alto"
    folder.mkdir(parents=True)
    (folder / "G_10.pth").write_bytes(b"")
    (folder / "config.json").write_text("{}")
    source = tmp_path / "take.wav"
    soundfile.write(source, sung_clip(0.3, MINI_SR), MINI_SR)
    cache = ModelCache(device="cpu", factory=FlakySvc)
    page = build_page(cache, tmp_path / "logs", out_dir=str(tmp_path / "out"))
    convert = next(block.fn for block in page.fns.values() if block.name == "convert")
    model = (str(folder), None, None, None, False)  # folder, G, config, cluster, retrieval
    diffusion = (False, False, "", "", False)  # shallow, only, model, config, enhance
    conversion = (0.0, "tenor", 0, False, "pm", 0.4, -40, 0.5, 100, False, 0)
    inputs = (*model, *diffusion, *conversion, str(source), None)

    audio, download, status = convert(*inputs)
    assert audio is None and download is None
    assert status.startswith("error: RuntimeError: CUDA out of memory") and "\n" not in status
    assert FlakySvc.cleared == 1  # the failed run's cached GPU memory is given back
    audio, download, status = convert(*inputs)
    assert status.startswith("converted to tenor") and Path(audio).is_file()
    assert cache.loads == 1 and FlakySvc.runs == 2


class _FakePage:
    """Stands in for the gradio page: records how it would be served."""

    def __init__(self) -> None:
        self.launched: dict[str, Any] = {}

    def queue(self) -> _FakePage:
        return self

    def launch(self, **kwargs: Any) -> None:
        self.launched = kwargs


def test_local_by_default_and_public_host_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import inference.webui_page

    page = _FakePage()
    monkeypatch.setattr(inference.webui_page, "build_page", lambda cache, logs: page)
    assert run_cli(webUI.main, ["--port", "7999"]) == 0
    assert page.launched["server_name"] == "127.0.0.1" and page.launched["server_port"] == 7999
    assert page.launched["share"] is False
    assert "anyone who can reach" not in caplog.text
    assert run_cli(webUI.main, ["--host", "0.0.0.0"]) == 0
    assert page.launched["server_name"] == "0.0.0.0"
    assert "listening on 0.0.0.0: anyone who can reach" in caplog.text
    assert not webUI.is_public("::1") and webUI.is_public("192.168.1.5")
    assert run_cli(webUI.main, ["--port", "70000"]) == 2
    assert capsys.readouterr().err.startswith("error: --port 70000")


# --------------------------------------------------------------------------- the page in a browser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture()
def browser() -> Any:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("no chromium/chromedriver: run `make browser` (apt-get install chromium "
                    "chromium-driver, as root)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", "--window-size=1400,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_for(driver: Any, css: str, text: str, timeout: float = 120) -> str:
    """Wait until the textbox at `css` holds `text`; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    def value(_: Any) -> str | None:
        boxes = driver.find_elements("css selector", f"{css} textarea, {css} input")
        current = boxes[0].get_attribute("value") if boxes else ""
        return current if current and text in current else None

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(value)


def _element(driver: Any, css: str, timeout: float = 60) -> Any:
    """The element at `css` once the page's scripts have drawn it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        lambda _: (driver.find_elements("css selector", css) or [None])[0]
    )


def _upload(driver: Any, css: str, path: Path) -> None:
    _element(driver, f"{css} input[type=file]").send_keys(str(path))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_page_loads_model_converts_and_reports_bad_upload(
    tmp_path_factory: pytest.TempPathFactory, browser: Any
) -> None:
    trained = shared_trained_model(tmp_path_factory)
    sampling_rate = trained["config"]["data"]["sampling_rate"]
    work = tmp_path_factory.mktemp("webui")
    clip = sung_clip(1.3, sampling_rate, f0=196.0)
    clip_path = work / "song.wav"
    soundfile.write(clip_path, clip, sampling_rate)
    text_path = work / "lyrics.txt"
    text_path.write_text("la la la\n")

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, str(REPO / "webUI.py"), "--host", "127.0.0.1", "--port", str(port),
         "--logs", str(trained["root"] / "logs"), "--encoder_path", str(TINY_ENCODER),
         "-d", "cpu"],
        cwd=work, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "2", "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        deadline = time.time() + 180
        while not _answers(url):
            assert server.poll() is None, (work / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "web UI did not start in 180 s"
            time.sleep(1)

        browser.get(url)
        _element(browser, "#load_model").click()
        status = _wait_for(browser, "#model_status", "loaded")
        assert "alice" in status and "bob" in status

        _upload(browser, "#input_file", clip_path)
        time.sleep(2)  # let the upload finish before converting
        browser.find_element("css selector", "#convert").click()
        status = _wait_for(browser, "#status", "converted", timeout=300)
        assert f"{clip.shape[0]} samples at {sampling_rate} Hz" in status

        links = browser.find_elements("css selector", "#result_file a[href]")
        assert links, "no download link in the page"
        download = work / "downloaded.wav"
        with urllib.request.urlopen(links[0].get_attribute("href"), timeout=30) as response:
            download.write_bytes(response.read())
        audio, rate = soundfile.read(download)
        assert rate == sampling_rate and audio.shape == clip.shape
        assert np.abs(audio).max() > 0
        screenshot = work / "webui.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        if os.environ.get("WEBUI_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["WEBUI_SCREENSHOT"])

        # A text file instead of audio: a message in the page, and the server goes on.
        browser.get(url)
        _upload(browser, "#input_file", text_path)
        time.sleep(2)
        browser.find_element("css selector", "#convert").click()
        page_text = ""
        deadline = time.time() + 120
        while "lyrics.txt" not in page_text and time.time() < deadline:
            time.sleep(1)
            page_text = browser.find_element("css selector", "body").text
            boxes = browser.find_elements("css selector", "#status textarea")
            page_text += " " + " ".join(box.get_attribute("value") or "" for box in boxes)
        assert "error" in page_text.lower() and "lyrics.txt" in page_text, page_text[-2000:]
        assert "Traceback" not in page_text
        assert server.poll() is None and _answers(url)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    server_log = (work / "server.log").read_text()
    assert server_log.count("loaded ") == 1, server_log[-3000:]  # one load for both requests
