"""A real headless Chromium for tests, driven over the DevTools protocol on a pipe.

``chromium --remote-debugging-pipe`` reads DevTools commands on its fd 3 and writes answers and
events on its fd 4, each a JSON message ended by a NUL byte: no websocket, no driver, no browser
download (Debian's ``chromium`` package, which ``make browser`` installs). One page target is
attached in flat mode; :meth:`Browser.evaluate` awaits a page's promise and returns its value.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio",
)


def chromium_path() -> Optional[str]:
    """``$CHROMIUM``, else the first Chromium on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """A headless Chromium process with a fresh profile; ``extra_args`` add flags."""

    def __init__(self, extra_args: Sequence[str] = (), timeout: float = 120.0):
        binary = chromium_path()
        if binary is None:
            raise BrowserError("no Chromium found: `make browser` installs Debian's chromium (or set CHROMIUM)")
        self._timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child: its fd 3 reads our commands, its fd 4 answers
            high_r, high_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe", *extra_args,
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            close_fds=False, preexec_fn=wire_fds,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._answers: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.process.stderr), daemon=True).start()
        self.seen: list[dict] = []  # events read by wait_for_event, in order

    # --- protocol -------------------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while True:
                data = pipe.read(65536)
                if not data:
                    break
                buffer += data
                while b"\0" in buffer:
                    raw, buffer = buffer.split(b"\0", 1)
                    message = json.loads(raw)
                    if "id" in message:
                        with self._lock:
                            answer = self._answers.get(message["id"])
                        if answer is not None:
                            answer.put(message)
                    else:
                        self.events.put(message)
        with self._lock:
            for answer in self._answers.values():
                answer.put({"error": {"message": "Chromium closed its DevTools pipe"}})

    def send(self, method: str, params: Optional[dict] = None, *, session: Optional[str] = None,
             timeout: Optional[float] = None) -> dict:
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
            answer: queue.Queue = queue.Queue()
            self._answers[call_id] = answer
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = answer.get(timeout=timeout or self._timeout)
        except queue.Empty:
            raise BrowserError(f"no answer to {method} from Chromium: {self.stderr()[-2000:]}") from None
        finally:
            with self._lock:
                self._answers.pop(call_id, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply["result"]

    # --- pages ----------------------------------------------------------------------------

    def open(self, url: str) -> str:
        """Opens ``url`` in a new tab with the Network domain on; returns its session id once loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Network.enable", session=session)
        self.send("Page.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for_event("Page.loadEventFired", session)
        return session

    def wait_for_event(self, method: str, session: Optional[str] = None, timeout: Optional[float] = None,
                       where=lambda params: True) -> dict:
        """The params of the next event ``method`` (of ``session``) that ``where`` accepts; the
        events skipped meanwhile are kept in :attr:`seen`."""
        deadline = timeout or self._timeout
        while True:
            try:
                event = self.events.get(timeout=deadline)
            except queue.Empty:
                raise BrowserError(f"no {method} event from Chromium") from None
            self.seen.append(event)
            if event.get("method") == method and (session is None or event.get("sessionId") == session) \
                    and where(event.get("params", {})):
                return event["params"]

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of ``expression`` in the page, its promise awaited; a page exception raises."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=session)
        if "exceptionDetails" in result:
            raise BrowserError(f"the page threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def drain_events(self) -> list[dict]:
        """Every event received and not yet read."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def stderr(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except BrowserError:
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def page_dir(files: dict[str, str]) -> Path:
    """A temporary directory holding ``files`` (name → text), for a static HTTP server."""
    root = Path(tempfile.mkdtemp(prefix="pages-"))
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root
