"""A headless Chromium driven through the DevTools protocol, for tests/test_site.py.

Debian's `chromium` package, started with a fresh profile and the flags a closed machine needs (no
background networking, no component updates, no sync: otherwise it tries to reach Google's servers),
and with every host name but 127.0.0.1 resolving to nothing, so that a page that tries to load
something from another host fails loudly in the request log instead of leaving the machine.
`Browser.visit(url)` loads a page and returns what the test checks: every request and its status,
JavaScript errors, and a report computed in the page (PAGE_REPORT).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]

# Evaluated in the page once it has loaded (and its fonts have): what a reader would see.
PAGE_REPORT = r"""
(async () => {
  await document.fonts.ready;
  const code = "pre, code, script, style, textarea, .katex, .katex-display";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode: (n) => n.parentElement.closest(code) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  let prose = "";
  while (walker.nextNode()) prose += walker.currentNode.nodeValue + "\n";
  const math = [...document.querySelectorAll(".arithmatex")];
  const resources = "script[src], link[href]:not([rel=canonical]), img[src], iframe[src], source[src], video[src], audio[src]";
  return {
    title: document.title,
    h1: (document.querySelector(".md-content h1") || {textContent: ""}).textContent.trim(),
    ids: [...document.querySelectorAll("[id]")].map((e) => e.id),
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    images: [...document.querySelectorAll("img")].map((i) => ({src: i.currentSrc || i.src,
                                                              ok: i.complete && i.naturalWidth > 0})),
    math: math.length,
    rendered: math.filter((e) => e.querySelector(".katex") && !/\\[\(\[]/.test(
        [...e.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.nodeValue).join(""))).length,
    displayed: document.querySelectorAll(".katex-display").length,
    // A formula that does not parse is a .katex-error; an unknown command inside one that does is
    // typeset in KaTeX's errorColor (course/assets/katex-render.js sets it to #cc0000).
    katexErrors: [...document.querySelectorAll(".katex-error")].map((e) => e.title || e.textContent).concat(
        [...document.querySelectorAll(".katex [style*='color']")].filter(
            (e) => getComputedStyle(e).color === "rgb(204, 0, 0)").map((e) => e.textContent)),
    raw: prose.match(/\$\$|\\\(|\\\)|\\\[|\\\]|\$[^\s$][^$\n]*?[^\s$\\]\$/g) || [],
    fontsLoaded: [...document.fonts].filter((f) => f.status === "loaded").map((f) => f.family),
    fontsFailed: [...document.fonts].filter((f) => f.status === "error").map((f) => f.family),
    outputs: document.querySelectorAll(".language-output").length,
    offHost: [...document.querySelectorAll(resources)].map((e) => e.src || e.href)
        .filter((u) => !u.startsWith(location.origin + "/") && !u.startsWith("data:")),
    notInSite: [...document.querySelectorAll(".not-in-site")].map((e) => e.title),
    nav: [...document.querySelectorAll("nav.md-nav--primary a.md-nav__link[href]")].map((a) => a.href),
    icon: (document.querySelector("link[rel~=icon]") || {href: null}).href,
  };
})()
"""


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, executable: str, timeout: float = 60.0):
        import websocket  # websocket-client, a dev dependency

        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="minift-chromium-")
        self.log = open(Path(self.profile) / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        port_file = Path(self.profile) / "DevToolsActivePort"  # Chromium writes its port there
        deadline = time.monotonic() + timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{executable} did not start: {self.chromium_log()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        # suppress_origin: Chromium refuses DevTools connections that send an Origin header.
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                                  suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Network.setCacheDisabled", cacheDisabled=True)  # every page fetches all it needs
        self.call("Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=True, flatten=True)

    def chromium_log(self) -> str:
        path = Path(self.profile) / "chromium.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def _send(self, method: str, session: str | None = None, **params) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        return self.next_id

    def _receive(self) -> dict:
        message = json.loads(self.socket.recv())
        if "id" not in message:
            self.events.append(message)
            if message["method"] == "Target.attachedToTarget":
                # A worker of the page (the site's search runs in one): watch its requests too, then
                # let it start (it waits for us: waitForDebuggerOnStart).
                session = message["params"]["sessionId"]
                self._send("Network.enable", session)
                self._send("Runtime.enable", session)
                self._send("Runtime.runIfWaitingForDebugger", session)
        return message

    def call(self, method: str, **params) -> dict:
        sent = self._send(method, **params)
        while True:
            message = self._receive()
            if message.get("id") == sent:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event["method"] == method:
                    return event
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {self.timeout} s")
            self._receive()

    def visit(self, url: str) -> dict:
        """Loads url and returns {"url", "status", "requests": [(url, status or error)], "errors",
        "report": PAGE_REPORT's answer}. A request answered from the browser's cache (the favicon,
        fetched by an earlier page: its cache ignores setCacheDisabled) has the status "cache"."""
        import websocket

        self.events = []
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        answer = self.call("Runtime.evaluate", expression=PAGE_REPORT, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"the page report failed on {url}: {answer['exceptionDetails']}")
        sent, outcome = self._requests()
        deadline = time.monotonic() + 10
        while set(sent) - set(outcome) and time.monotonic() < deadline:  # answers still on the way
            try:
                self.socket.settimeout(max(0.1, deadline - time.monotonic()))
                self._receive()
            except websocket.WebSocketTimeoutException:
                break
            finally:
                self.socket.settimeout(self.timeout)
            sent, outcome = self._requests()
        requests = [(u, outcome.get(i, "no answer")) for i, u in sent.items()]
        document = next((status for u, status in requests if u == url.partition("#")[0]), None)
        errors = [e["params"]["exceptionDetails"].get("exception", {}).get("description", str(e["params"]))
                  for e in self.events if e["method"] == "Runtime.exceptionThrown"]
        errors += [" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"])
                   for e in self.events if e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error"]
        errors += [e["params"]["entry"]["text"] for e in self.events
                   if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
        return {"url": url, "status": document, "requests": requests, "errors": errors,
                "report": answer["result"]["value"]}

    def _requests(self) -> tuple[dict, dict]:
        """Request id -> url of every request so far, and request id -> HTTP status or error text."""
        sent = {e["params"]["requestId"]: e["params"]["request"]["url"]
                for e in self.events if e["method"] == "Network.requestWillBeSent"}
        outcome = {e["params"]["requestId"]: "cache"
                   for e in self.events if e["method"] == "Network.requestServedFromCache"}
        outcome.update({e["params"]["requestId"]: e["params"]["response"]["status"]
                        for e in self.events if e["method"] == "Network.responseReceived"})
        outcome.update({e["params"]["requestId"]: e["params"]["errorText"]
                        for e in self.events if e["method"] == "Network.loadingFailed"})
        return sent, outcome

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def needs_root_to_install() -> str:
    """What to do about a missing chromium, for the skip (or CI failure) message."""
    if os.geteuid() == 0:
        return "`make test` installs it (apt-get install -y chromium) when run as root"
    return "install Debian's chromium (sudo apt-get install chromium), or run `make test` as root as CI does"
