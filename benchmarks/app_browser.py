"""Drive tools/app.py in a real browser: Debian's Chromium through Selenium, headless.

Used by the browser tests (tests/test_app_browser.py) and the app latency benchmark
(benchmarks/app_latency.py). Nothing here downloads a browser or a driver: Chromium and
chromedriver come from the system's packages (``apt-get install chromium chromium-driver``);
:func:`find_chromium` says when they are missing. Selenium Manager is kept offline.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = REPO_ROOT / "tools" / "app.py"

__all__ = ["AppPage", "AppServer", "chromium_driver", "find_chromium", "free_port"]


def find_chromium() -> tuple[str, str] | None:
    """(chromium, chromedriver) from the system's PATH, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``tools/app.py`` with ``args`` in a child process on 127.0.0.1 and a free port, until
    :meth:`stop` (a context manager). Its output goes to ``log``."""

    def __init__(self, args: Sequence[str], log: str, env: dict | None = None, timeout=180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        cmd = [sys.executable, str(APP), "--host", "127.0.0.1", "--port", str(self.port), *args]
        env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT)
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the app stopped (exit {self.proc.returncode}):\n{self.output()}"
                )
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the app did not answer in {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.5)

    def output(self) -> str:
        with open(self.log) as f:
            return f.read()

    def get(self, url: str) -> bytes:
        """A file the page links to (a download)."""
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def chromium_driver(browser: str, driver: str, width: int = 1280, height: int = 1000):
    """Headless Chromium with a fresh profile, no background network, no first-run pages."""
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tempfile.mkdtemp(prefix="fsod_chromium_")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    web = webdriver.Chrome(service=Service(driver), options=options)
    web.fsod_profile = profile  # removed by AppPage.quit
    return web


# the picture's pixel (x, y) -> the offset from the img element's centre that Gradio maps back
# to (x, y): the same arithmetic as Gradio's image click handler (object-fit: contain, never
# enlarged)
_OFFSET_JS = """
const img = document.querySelector(arguments[0]);
if (!img || !img.complete || !img.naturalWidth) return null;
const r = img.getBoundingClientRect();
const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
const ox = (r.width - img.naturalWidth * s) / 2, oy = (r.height - img.naturalHeight * s) / 2;
return [ox + arguments[1] * s - r.width / 2, oy + arguments[2] * s - r.height / 2,
        img.naturalWidth, img.naturalHeight, s];
"""


class AppPage:
    """The app's page: tabs, uploads, clicks on pictures, and what the page shows."""

    def __init__(self, web, url: str, timeout: float = 60.0):
        self.web, self.url, self.timeout = web, url, timeout
        self._seen: dict[str, int] = {}  # the number of the last message waited for, per field
        web.get(url)
        self.wait(lambda: self._find("#class-name"), "the page to load")

    def quit(self) -> None:
        self.web.quit()
        shutil.rmtree(getattr(self.web, "fsod_profile", ""), ignore_errors=True)

    # ------------------------------------------------------------ basics
    def _find(self, css: str):
        from selenium.webdriver.common.by import By

        found = self.web.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def wait(
        self,
        condition: Callable[[], Any],
        what: str,
        timeout: float | None = None,
        poll: float = 0.02,
    ) -> Any:
        """Poll ``condition`` every ``poll`` seconds until it returns something true; returns
        it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                value = condition()
            except Exception:  # the page re-renders under us: try again
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(poll)

    def element(self, css: str):
        return self.wait(lambda: self._find(css), css)

    def tab(self, name: str) -> None:
        from selenium.webdriver.common.by import By

        button = self.wait(
            lambda: [b for b in self.web.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                     if b.text.strip() == name],
            f"tab {name}",
        )[0]  # fmt: skip
        button.click()

    def click(self, elem_id: str) -> None:
        el = self.element(f"#{elem_id}")
        self.web.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
        el.click()

    def upload(self, elem_id: str, paths: Sequence[str]) -> None:
        """Hand ``paths`` to the file input of ``elem_id`` (returns before Gradio has them)."""
        self.element(f"#{elem_id} input[type=file]").send_keys("\n".join(str(p) for p in paths))

    def listed_files(self, elem_id: str) -> list[str]:
        """The names a file component lists as uploaded (each row has its download link)."""
        return self.web.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".filter(r => r.querySelector('a.download-link[href]'))"
            ".map(r => r.querySelector('td.filename').getAttribute('aria-label'));",
            f"#{elem_id} tr.file",
        )

    def set_files(self, elem_id: str, paths: Sequence[str]) -> None:
        """Replace the files of the file component ``elem_id`` with ``paths`` and wait until it
        lists them as uploaded. (An upload to a multi-file component adds to the files it has;
        a click right after :meth:`upload` may still see the earlier ones.)"""
        clear = self._find(f"#{elem_id} button[aria-label=Clear]")
        if clear is not None:
            self.web.execute_script("arguments[0].scrollIntoView({block: 'center'});", clear)
            clear.click()
            self.wait(lambda: not self._find(f"#{elem_id} tr.file"), f"#{elem_id} to be empty")
        self.upload(elem_id, paths)
        names = [os.path.basename(str(p)) for p in paths]
        self.wait(lambda: self.listed_files(elem_id) == names, f"#{elem_id} to list {names}")

    def set_text(self, elem_id: str, text: str) -> None:
        box = self.element(f"#{elem_id} textarea, #{elem_id} input")
        box.clear()
        box.send_keys(text)

    def text(self, elem_id: str) -> str:
        box = self.element(f"#{elem_id} textarea, #{elem_id} input")
        return box.get_property("value") or ""

    def message(self, elem_id: str) -> str:
        el = self._find(f"#{elem_id} .fsod-msg")
        return el.text.strip() if el else ""

    def _message_number(self, elem_id: str) -> int:
        el = self._find(f"#{elem_id} .fsod-msg")
        return int(el.get_attribute("data-n") or 0) if el else 0

    def wait_message(self, elem_id: str, contains: str = "", timeout: float | None = None) -> str:
        """Wait for a message in ``elem_id`` newer than the last one waited for (the app
        numbers its messages) that contains ``contains``; returns its text."""
        seen = self._seen.get(elem_id, 0)

        def new_message():
            n = self._message_number(elem_id)
            text = self.message(elem_id) if n > seen else ""
            return (n, text) if text and contains in text else None

        n, text = self.wait(new_message, f"a new message in #{elem_id} with {contains!r}", timeout)
        self._seen[elem_id] = n
        return text

    def json(self, elem_id: str) -> dict:
        text = self.text(elem_id)
        return json.loads(text) if text.strip() else {}

    def set_slider(self, elem_id: str, value: float) -> None:
        """Type a value into the slider's number field (what Gradio's slider listens to)."""
        from selenium.webdriver.common.keys import Keys

        box = self.element(f"#{elem_id} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.ENTER)

    # ------------------------------------------------------------ pictures
    def picture(self, elem_id: str, src_before: str = "") -> str:
        """Wait for the picture of ``elem_id`` to be loaded (and differ from ``src_before``);
        returns its src."""
        css = f"#{elem_id} img"

        def loaded():
            return self.web.execute_script(
                "const i = document.querySelector(arguments[0]);"
                "return i && i.complete && i.naturalWidth && i.src !== arguments[1] ? i.src : null",
                css,
                src_before,
            )

        return self.wait(loaded, f"the picture of #{elem_id}")

    def click_pixel(self, elem_id: str, x: int, y: int) -> None:
        """Click the picture of ``elem_id`` at its pixel (x, y)."""
        from selenium.webdriver.common.action_chains import ActionChains

        css = f"#{elem_id} img"
        self.picture(elem_id)
        img = self.element(css)
        self.web.execute_script("arguments[0].scrollIntoView({block: 'center'});", img)
        dx, dy, *_ = self.web.execute_script(_OFFSET_JS, css, x, y)
        ActionChains(self.web).move_to_element_with_offset(
            img, round(dx), round(dy)
        ).click().perform()

    def draw_box(self, elem_id: str, box: Sequence[float]) -> None:
        """Two clicks: the box's top-left and bottom-right pixels."""
        self.click_pixel(elem_id, int(box[0]), int(box[1]))
        self.click_pixel(elem_id, int(box[2]), int(box[3]))

    def gallery_ready(self, elem_id: str) -> bool:
        """Every picture of a gallery is loaded."""
        return bool(
            self.web.execute_script(
                "const im = document.querySelectorAll(arguments[0]);"
                "return im.length > 0 && [...im].every(i => i.complete && i.naturalWidth > 0);",
                f"#{elem_id} img",
            )
        )

    def screenshot(self, path: str) -> None:
        self.web.save_screenshot(path)
