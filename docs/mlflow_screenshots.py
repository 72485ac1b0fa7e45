"""Screenshots of a sweep in the MLflow UI (docs/*.png), taken with Debian's headless Chromium.

    mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --host 127.0.0.1 --port 5055 &
    python docs/mlflow_screenshots.py http://127.0.0.1:5055 EXPERIMENT_ID PARENT_RUN_ID

Chromium is driven over its DevTools protocol with a minimal websocket client (standard library
only): it closes the assistant panel, expands the parent run, adds metric columns and opens the
report; no test depends on it.
"""

import base64
import json
import os
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request


class CDP:
    """A DevTools session on one page: ``call`` a method, ``js`` evaluate, ``shot`` a PNG."""

    def __init__(self, ws_url: str) -> None:
        host_port, path = ws_url.removeprefix("ws://").split("/", 1)
        host, port = host_port.split(":")
        self.sock = socket.create_connection((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.sock.recv(4096)
        self.rest = buf.split(b"\r\n\r\n", 1)[1]
        self.id = 0

    def _recv_exact(self, n: int) -> bytes:
        while len(self.rest) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.rest += chunk
        out, self.rest = self.rest[:n], self.rest[n:]
        return out

    def _send(self, text: str) -> None:
        data = text.encode()
        head = bytearray([0x81])
        n = len(data)
        if n < 126:
            head.append(0x80 | n)
        elif n < 65536:
            head.append(0x80 | 126)
            head += struct.pack(">H", n)
        else:
            head.append(0x80 | 127)
            head += struct.pack(">Q", n)
        mask = os.urandom(4)
        head += mask
        self.sock.sendall(bytes(head) + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _recv(self) -> dict:
        msg = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            msg += self._recv_exact(n)
            if b0 & 0x80:
                return json.loads(msg)

    def call(self, method: str, **params):
        self.id += 1
        self._send(json.dumps({"id": self.id, "method": method, "params": params}))
        while True:
            m = self._recv()
            if m.get("id") == self.id:
                if "error" in m:
                    raise RuntimeError(m["error"])
                return m.get("result", {})

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        return r.get("result", {}).get("value")

    def shot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))


def start(width: int = 1700, height: int = 1000, port: int = 9333):
    proc = subprocess.Popen(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--remote-debugging-port={port}",
            "--remote-allow-origins=*",
            f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(50):
        try:
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
            page = next(p for p in pages if p["type"] == "page")
            return proc, CDP(page["webSocketDebuggerUrl"])
        except (OSError, StopIteration):
            time.sleep(0.2)
    raise RuntimeError("chromium did not start")


COLUMNS = ("baseline_miou", "specialised_miou", "gain", "gain_ci_lo", "gain_ci_hi", "val_miou")
COLUMNS += ("n_train", "seed")
CLOSE_ASSISTANT = "[...document.querySelectorAll('button')].filter(b=>b.getAttribute('aria-label')=='Close')"


def click_text(c: CDP, text: str) -> int:
    """Click the innermost element whose text is ``text``; returns how many matched."""
    return c.js(
        "(() => { const s=[...document.querySelectorAll('*')].filter(e=>e.textContent.trim()=="
        f"{json.dumps(text)}); if (s.length) s[s.length-1].click(); return s.length }})()"
    )


def open_page(c: CDP, url: str) -> None:
    """Open ``url`` with the UI's assistant panel kept shut (it opens itself on a first visit)."""
    c.call("Page.enable")
    c.call("Page.navigate", url=url)
    time.sleep(6)
    c.js(
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"
    )
    c.call("Page.reload")
    time.sleep(7)
    c.js(CLOSE_ASSISTANT + ".forEach(b=>b.click())")
    time.sleep(1)


def runs_table(ui: str, exp: str, out: str) -> None:
    proc, c = start(2000, 900)
    try:
        open_page(c, f"{ui}/#/experiments/{exp}/runs?workflowType=machine_learning")
        c.js("document.querySelector('button[data-component-id*=runnamecellrenderer]').click()")  # expand
        time.sleep(2)
        c.js("document.querySelector('button[data-component-id*=experimentviewrunscolumnselector]').click()")
        time.sleep(2)
        for name in COLUMNS:  # the column selector's entries
            c.js(
                "(() => { const s=[...document.querySelectorAll('span')].filter(e=>e.children.length==0 && "
                f"e.textContent.trim()=={json.dumps(name)}); if (s.length) s[0].click() }})()"
            )
            time.sleep(0.4)
        for kind in ("keyDown", "keyUp"):  # close the column selector
            c.call("Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape", windowsVirtualKeyCode=27)
        time.sleep(2)
        c.shot(out)
    finally:
        proc.terminate()
        proc.wait()


def report(ui: str, exp: str, parent: str, out: str) -> None:
    proc, c = start(1500, 2050)
    try:
        open_page(c, f"{ui}/#/experiments/{exp}/runs/{parent}/artifacts?workflowType=machine_learning")
        for name in ("rules", "report.html"):
            click_text(c, name)
            time.sleep(3)
        c.shot(out)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    import sys

    ui, exp, parent = sys.argv[1:4]
    here = os.path.dirname(os.path.abspath(__file__))
    runs_table(ui, exp, os.path.join(here, "mlflow-runs-table.png"))
    report(ui, exp, parent, os.path.join(here, "mlflow-report.png"))
