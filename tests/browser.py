"""Headless Chromium driven over the DevTools protocol, for tests that look at a page as a reader does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab: navigate, evaluate JavaScript, screenshot. Use ``with open_page(w, h) as page``."""

    def __init__(self, websocket, loop) -> None:
        self._websocket, self._loop, self._next = websocket, loop, 0

    def _call(self, method: str, **params) -> dict[str, Any]:
        async def call():
            self._next += 1
            ident = self._next
            await self._websocket.send(json.dumps({"id": ident, "method": method, "params": params}))
            while True:
                message = json.loads(await self._websocket.recv())
                if message.get("id") == ident:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message.get("result", {})

        return self._loop.run_until_complete(call())

    def goto(self, url: str) -> None:
        self._call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self._call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true: {expression}")
            time.sleep(0.25)

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self._call("Page.captureScreenshot", format="png")["data"])
        Path(path).write_bytes(data)
        return data


@contextlib.contextmanager
def open_page(width: int, height: int):
    """A headless Chromium page; a machine without Chromium fails the test with the install command (never skips)."""
    import websockets

    if chromium() is None:
        import pytest

        pytest.fail("Chromium not found: run `make test-deps` (installs Debian's chromium)", pytrace=False)
    profile = tempfile.mkdtemp(prefix="bakeoff-chromium-")
    process = subprocess.Popen(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
         "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    loop = asyncio.new_event_loop()
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as response:
            tabs = json.load(response)
        address = next(tab["webSocketDebuggerUrl"] for tab in tabs if tab["type"] == "page")
        websocket = loop.run_until_complete(websockets.connect(address, max_size=None))
        page = Page(websocket, loop)
        page._call("Page.enable")
        page._call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        try:
            yield page
        finally:
            loop.run_until_complete(websocket.close())
    finally:
        loop.close()
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)
