"""The Dagster UI as a person sees it: `dagster dev` (what `make ui` runs) on a free loopback port against a
materialized instance, read by Debian's headless Chromium through playwright (never `playwright install`).

Used by test_pipeline.py (on the instance its whole-plan run materialized) so the UI is checked on real
materializations without training anything again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 20
PAGE_TIMEOUT_MS = 90_000
VIEWPORT = {"width": 1280, "height": 800}
SCREENSHOTS_ENV = "ENS_ASSETS_UI_SCREENSHOTS"  # a folder: the screenshots are copied there (README's docs/)


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing (Debian package chromium; `make install` installs it when it can)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python package playwright is missing (pip install -e '.[test]')"
    return None


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dagster_dev(repo_root: Path, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`dagster dev` (webserver + daemon + code server) in its own process group; yields its URL and stops
    the whole group afterwards (in the background it ignores SIGINT, so the group gets SIGTERM, then SIGKILL)."""
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    cli = Path(sys.executable).with_name("dagster")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(cli), "dev", "-w", str(repo_root / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=repo_root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"dagster dev did not answer in {START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    # The webserver, daemon and code servers share the group; whatever is left of it goes now.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)


class UiPages:
    """One headless Chromium page on the UI; each visit waits for a text, then returns the page's text."""

    def __init__(self, page, url: str, shots: Path):
        self.page, self.url, self.shots = page, url, shots

    def visit(self, path: str, wait_for: str) -> str:
        self.page.goto(self.url + path, timeout=PAGE_TIMEOUT_MS)
        self.page.get_by_text(wait_for).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        self._dismiss_welcome()
        return self.page.inner_text("body")

    def click(self, text: str, then_wait_for: str) -> str:
        self.page.get_by_text(text).first.click()
        self.page.get_by_text(then_wait_for).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        return self.page.inner_text("body")

    def screenshot(self, name: str, scroll_to: str | None = None) -> Path:
        if scroll_to:
            self.page.get_by_text(scroll_to, exact=True).first.scroll_into_view_if_needed()
        self.page.wait_for_timeout(500)  # let the last layout pass settle
        path = self.shots / name
        self.page.screenshot(path=str(path))
        return path

    def metadata_overflow(self) -> dict[str, int]:
        """Per metadata key of the asset page shown: how many px of its value lie right of the metadata
        table's visible edge (0: the whole value is in view without scrolling sideways)."""
        return self.page.evaluate("""() => {
            const box = document.querySelector('[class*=assetEventMetadataScrollContainer]');
            const edge = box.getBoundingClientRect().right;
            const out = {};
            for (const tr of box.querySelectorAll(':scope table > tbody > tr')) {
                const cells = tr.querySelectorAll(':scope > td');
                const range = document.createRange();
                range.selectNodeContents(cells[cells.length - 1]);
                const right = Math.max(0, ...[...range.getClientRects()].map(r => r.right));
                out[cells[0].innerText.trim()] = Math.max(0, Math.round(right - edge));
            }
            return out;
        }""")

    def top(self, text: str) -> float:
        """How far down the window (px) the first element reading exactly `text` starts."""
        return self.page.get_by_text(text, exact=True).first.bounding_box()["y"]

    def sideways_scroll(self) -> dict[str, int]:
        """How many px the page, or any pane of it that scrolls sideways (Dagster's metadata table sits in one
        with overflow-x: auto), is wider than its box: {} when nothing on the page scrolls sideways."""
        return self.page.evaluate("""() => {
            const out = {};
            const doc = document.scrollingElement;
            if (doc.scrollWidth > doc.clientWidth) out['document'] = doc.scrollWidth - doc.clientWidth;
            for (const el of document.querySelectorAll('*')) {
                if (!['auto', 'scroll'].includes(getComputedStyle(el).overflowX)) continue;
                if (el.scrollWidth > el.clientWidth) {
                    const name = el.tagName.toLowerCase() + '.' + String(el.className).split(' ')[0];
                    out[name] = Math.max(out[name] || 0, el.scrollWidth - el.clientWidth);
                }
            }
            return out;
        }""")

    def link_addresses(self, prefix: str) -> dict[str, str]:
        """href -> text of the page's links whose address starts with `prefix`."""
        return self.page.evaluate(
            "(prefix) => Object.fromEntries([...document.querySelectorAll('a')]"
            ".filter(a => a.href.startsWith(prefix)).map(a => [a.href, a.innerText.trim()]))",
            prefix,
        )

    def markdown_dialog(self, key: str) -> tuple[str, dict]:
        """Open the '[Show Markdown]' dialog of metadata `key`: its text and its box (x, y, width, height)."""
        row = self.page.locator("tr", has=self.page.get_by_text(key, exact=True)).first
        row.get_by_text("[Show Markdown]").first.click()
        dialog = self.page.get_by_role("dialog").first
        dialog.wait_for(timeout=PAGE_TIMEOUT_MS)
        self.page.wait_for_timeout(500)
        text, box = dialog.inner_text(), dialog.bounding_box()
        self.page.keyboard.press("Escape")
        dialog.wait_for(state="hidden", timeout=PAGE_TIMEOUT_MS)
        return text, box

    def _dismiss_welcome(self) -> None:
        """A fresh browser profile gets Dagster's community dialog over the page: close it before reading the
        page. A plain click() here would itself be intercepted by the locator handler (which closes the dialog
        first) and then wait for a button that is gone; a dispatched click runs no handler."""
        skip = self.page.get_by_role("button", name="Skip")
        if skip.count():
            skip.first.dispatch_event("click")
            skip.first.wait_for(state="hidden", timeout=PAGE_TIMEOUT_MS)


@contextlib.contextmanager
def chromium_pages(url: str, shots: Path) -> Iterator[UiPages]:
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            # Dagster's community dialog can open late on a loaded machine, over whatever is clicked next:
            # playwright dismisses it before any action it would block.
            page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
            yield UiPages(page, url, shots)
        finally:
            browser.close()


def publish_screenshots(paths: list[Path]) -> None:
    """Copy the screenshots to $ENS_ASSETS_UI_SCREENSHOTS when set (how the README's pictures are made)."""
    target = os.environ.get(SCREENSHOTS_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, Path(target) / path.name)
