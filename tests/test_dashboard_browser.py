"""The /dashboard page in a real headless Chromium, against the real proxy.

The browser is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages ending in NUL on fds 3 and 4), stdlib only. That way the test waits for an event,
the page's body[data-loaded] (or body[data-error]), never for wall-clock time. (A plain
`--dump-dom` dumps at the load event, before the page's first fetch('/stats') has answered.)

Credentials: the page is opened as http://admin:KEY@127.0.0.1:PORT/dashboard. Chromium answers
the page's 401 + `WWW-Authenticate: Basic` with the URL's user:password, keeps them in its
HTTP auth cache, and sends them unasked with the page's same-origin fetch of /stats.

Skipped when no Chromium is found: CHROMIUM_BIN, else chromium / chromium-browser /
google-chrome on PATH (Debian: apt-get install chromium). Screenshots go to tests/artifacts/.
"""

import base64
import html.parser
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest

import faults
from conftest import PATIENCE, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
ARTIFACTS = os.path.join(HERE, "artifacts")


def find_chromium():
    wanted = os.environ.get("CHROMIUM_BIN")
    if wanted:
        return shutil.which(wanted)
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = find_chromium()
pytestmark = [pytest.mark.skipif(not CHROMIUM, reason=(
    "CHROMIUM_BIN=%r is not an executable" % os.environ["CHROMIUM_BIN"]
    if os.environ.get("CHROMIUM_BIN") else
    "no Chromium (chromium, chromium-browser or google-chrome) on PATH; set CHROMIUM_BIN "
    "or apt-get install chromium")), pytest.mark.usefixtures("same_utc_day")]


# == Chromium over the DevTools pipe ======================================================

class DevTools:
    """A headless Chromium and a blocking DevTools client on its pipe."""

    def __init__(self, binary, timeout=PATIENCE):
        self.deadline = time.monotonic() + timeout
        self.profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
        to_chromium, from_chromium = os.pipe(), os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4. Popen cannot put an fd
        # at a given number (and preexec_fn is unsafe in a threaded test), so the pipe ends
        # go in as stdin/stdout and sh moves them to 3 and 4.
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null', binary,
             "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--remote-debugging-pipe",
             "--user-data-dir=" + self.profile, "about:blank"],
            stdin=to_chromium[0], stdout=from_chromium[1], stderr=subprocess.DEVNULL)
        os.close(to_chromium[0])
        os.close(from_chromium[1])
        self.writer, self.reader = to_chromium[1], from_chromium[0]
        self.buffer = b""
        self.last_id = 0
        self.events = []

    def _read(self):
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.reader], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            data = os.read(self.reader, 1 << 16)
            if not data:
                raise RuntimeError("Chromium exited (code %s)" % self.process.poll())
            self.buffer += data
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method, params=None, session=None):
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.writer, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError("%s: %s" % (method, reply["error"]))
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, matches):
        """The first event (seen or to come) for which matches(event) is true."""
        while True:
            for event in self.events:
                if matches(event):
                    self.events.remove(event)
                    return event
            self.events.append(self._read())

    def close(self):
        try:
            self.deadline = time.monotonic() + 5
            self.call("Browser.close")
        except Exception:   # already gone or stuck: killed below
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.writer)
        os.close(self.reader)
        shutil.rmtree(self.profile, ignore_errors=True)


# Resolves once the page has rendered its first /stats (or shown its error banner); at once
# with "not the dashboard" when the navigation got something else (a 401 page, say).
WAIT_FOR_PAGE = """new Promise(resolve => {
  const state = () => !document.getElementById("chart") ? "not the dashboard" :
    document.body.dataset.loaded ? "loaded" : document.body.dataset.error ? "error" : "";
  if (state()) return resolve(state());
  new MutationObserver(() => state() && resolve(state()))
    .observe(document.documentElement, {attributes: true, subtree: true, childList: true});
})"""

PAGE_SUMMARY = """JSON.stringify({
  status: (performance.getEntriesByType("navigation")[0] || {}).responseStatus,
  title: document.title,
  banner: (document.getElementById("banner") || {}).textContent,
  error: document.body && document.body.dataset.error,
  text: document.body ? document.body.innerText.slice(0, 300) : ""})"""


def render_dashboard(url_with_credentials, screenshot_path, width=1280, height=900,
                     timeout=PATIENCE):
    """Open the dashboard in headless Chromium, wait until it has rendered /stats, save a
    full-page PNG to screenshot_path and return the DOM (outerHTML). Fails the test, with
    what the page shows, when the page is not the dashboard or shows its error banner."""
    browser = DevTools(CHROMIUM, timeout)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget",
                               {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.enable", {}, session)
        browser.call("Page.setLifecycleEventsEnabled", {"enabled": True}, session)
        browser.call("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        navigation = browser.call("Page.navigate", {"url": url_with_credentials}, session)
        if navigation.get("errorText"):
            pytest.fail("cannot open %s: %s" % (url_with_credentials, navigation["errorText"]))
        # The load of this navigation (not of about:blank), then the page's own signal.
        browser.wait_event(lambda e: e.get("method") == "Page.lifecycleEvent"
                           and e["params"]["name"] == "load"
                           and e["params"]["loaderId"] == navigation.get("loaderId"))
        state = browser.call("Runtime.evaluate", {
            "expression": WAIT_FOR_PAGE, "awaitPromise": True, "returnByValue": True},
            session)["result"]["value"]
        shot = browser.call("Page.captureScreenshot",
                            {"format": "png", "captureBeyondViewport": True}, session)
        with open(screenshot_path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        if state != "loaded":
            summary = browser.call("Runtime.evaluate", {
                "expression": PAGE_SUMMARY, "returnByValue": True}, session)["result"]["value"]
            pytest.fail("the dashboard did not load (%s): %s (screenshot: %s)" % (
                state, summary, screenshot_path))
        return browser.call("Runtime.evaluate", {
            "expression": "document.documentElement.outerHTML", "returnByValue": True},
            session)["result"]["value"]
    finally:
        browser.close()


# == The DOM, parsed with html.parser ===================================================

class Element:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    @property
    def text(self):
        return "".join(c if isinstance(c, str) else c.text for c in self.children).strip()

    @property
    def classes(self):
        return (self.attrs.get("class") or "").split()

    def iter(self):
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def find_all(self, tag=None, cls=None, **attrs):
        """Descendants by tag, class and attributes (data_key="x" matches data-key="x")."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [e for e in self.iter() if (tag is None or e.tag == tag)
                and (cls is None or cls in e.classes)
                and all(e.attrs.get(k) == v for k, v in wanted.items())]

    def find(self, tag=None, cls=None, **attrs):
        found = self.find_all(tag, cls, **attrs)
        assert len(found) == 1, "%d elements match %s %s %s" % (len(found), tag, cls, attrs)
        return found[0]


class _TreeBuilder(html.parser.HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Element("#document", {})

    def handle_starttag(self, tag, attrs):
        element = Element(tag, attrs, self.current)
        self.current.children.append(element)
        if tag not in self.VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Element(tag, attrs, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        if self.current.tag not in ("script", "style"):
            self.current.children.append(data)


def parse_html(text):
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


def number(element):
    """The exact number behind a cell or tile (its data-value, else its digits)."""
    raw = element.attrs.get("data-value")
    if raw is None:
        raw = "".join(ch for ch in element.text if ch.isdigit() or ch == ".")
    return float(raw) if raw not in ("", None) else None


# == The tests ==========================================================================

ADMIN = {"Authorization": "Bearer admin-key"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def dashboard_config(fake, tmp_path):
    return {"server": {"api_keys": [{"key": "alice-key", "name": "alice"},
                                    {"key": "bob-key", "name": "bob"}],
                       "admin_keys": ["admin-key"], "state_dir": str(tmp_path)},
            "upstreams": {"fake": {"kind": "openai", "base_url": fake.base_url,
                                   "api_keys": ["sk-a-1111", "sk-b-2222"]}},
            "default_model": "fake-model"}


def get_stats(proxy):
    status, _, body = proxy.request("GET", "/stats", None, ADMIN)
    assert status == 200, body[:300]
    return json.loads(body)


def artifact(name):
    """A path for a CI artifact (tests/artifacts/ is git-ignored)."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    return os.path.join(ARTIFACTS, name)


def between(value, before, after):
    """value was read between two /stats answers: equal to one of them, or in between."""
    if before is None or after is None:
        return value in (before, after)
    return value is not None and min(before, after) <= value <= max(before, after)


def test_dashboard_shows_what_stats_says(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(dashboard_config(fake, tmp_path))
    sent = {"alice": 3, "bob": 2}
    for name, count in sent.items():
        for _ in range(count):
            status, body = proxy.post("/v1/chat/completions", CHAT,
                                      {"Authorization": "Bearer %s-key" % name})
            assert status == 200, body
    proxy.wait_until_idle()
    total = sum(sent.values())
    wait_for(lambda: get_stats(proxy)["today"]["requests"] == total,
             message=lambda: "/stats today: %r" % get_stats(proxy)["today"])

    before = get_stats(proxy)
    page = render_dashboard("http://admin:admin-key@127.0.0.1:%d/dashboard" % proxy.port,
                            artifact("dashboard.png"))
    after = get_stats(proxy)
    doc = parse_html(page)
    body = doc.find("body")
    assert body.attrs.get("data-loaded") == "1"
    assert float(body.attrs["data-updated"]) >= before["generated_at"]

    # Tiles: today's totals are settled; the "now" ones may move between two answers.
    assert doc.find(id="today-requests").text == str(total)
    assert number(doc.find(id="today-requests")) == before["today"]["requests"] == total
    assert number(doc.find(id="today-tokens")) == (
        after["today"]["input_tokens"] + after["today"]["output_tokens"])
    for tile, field in (("now-rpm", "requests_per_minute"), ("now-tpm", "tokens_per_minute"),
                        ("now-error-rate", "error_rate"), ("now-p50", "p50_ms"),
                        ("now-p95", "p95_ms"), ("now-in-flight", "in_flight")):
        assert between(number(doc.find(id=tile)), before["now"][field], after["now"][field]), (
            tile, doc.find(id=tile).text, before["now"][field], after["now"][field])
    assert doc.find(id="now-error-rate").text == "0%"

    # Clients: one row each, with the counts the proxy keeps.
    for name, count in sent.items():
        row = doc.find("tr", data_client=name)
        assert row.find("td", cls="requests-today").text == str(count)
        expected = next(c for c in after["clients"] if c["name"] == name)
        assert expected["requests_today"] == count
        assert number(row.find("td", cls="tokens-today")) == expected["tokens_today"]

    # Upstream keys: a row per key of /stats, all healthy, the requests spread over them.
    keys = next(u for u in after["upstreams"] if u["name"] == "fake")["keys"]
    assert len(keys) == 2
    for key in keys:
        row = doc.find("tr", data_key="fake/" + key["key"])
        assert row.find("td", cls="health").text == key["health"] == "ok"
        assert "sk-a-1111" not in page and "sk-b-2222" not in page
    assert sum(k["requests_today"] for k in keys) == total

    # The chart has bars, and its legend names the models that had requests this hour.
    chart = doc.find("svg", id="chart")
    assert chart.find_all("rect"), "no bars in the chart"
    models = {name for name, s in after["series"]["hour"]["by"]["model"].items()
              if sum(s["requests"])}
    legend = {e.attrs["data-series"] for e in doc.find(id="legend").find_all("span")
              if "data-series" in e.attrs}
    assert legend == models if len(models) <= 7 else len(legend) == 7

    # No errors, and the table says so.
    assert not after["errors"]
    errors = doc.find("table", id="errors")
    assert not [r for r in errors.find_all("tr") if "data-request-id" in r.attrs]
    assert errors.find("td", cls="empty").text == "no errors"


def test_dashboard_shows_a_resting_key(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(dashboard_config(fake, tmp_path))
    # One key is over its quota: the proxy rests it for the hour the fake asks, and
    # answers on the other.
    fake.rules["sk-a-1111"] = faults.error("openai", 429, "key a is over its quota",
                                           retry_after=3600)
    for _ in range(2):   # round robin: one of the two starts on key a
        status, body = proxy.post("/v1/chat/completions", CHAT,
                                  {"Authorization": "Bearer alice-key"})
        assert status == 200, body
    proxy.wait_until_idle()

    stats = get_stats(proxy)
    keys = next(u for u in stats["upstreams"] if u["name"] == "fake")["keys"]
    resting = [k for k in keys if k["health"] == "resting"]
    assert len(resting) == 1, keys
    key = resting[0]
    page = render_dashboard("http://admin:admin-key@127.0.0.1:%d/dashboard" % proxy.port,
                            artifact("dashboard-resting.png"))
    doc = parse_html(page)
    row = doc.find("tr", data_key="fake/" + key["key"])      # e.g. "fake/key#1a2b3c4d"
    assert row.find("td", cls="health").text == "resting"
    assert row.attrs.get("data-health") == "resting"
    cells = [td.text for td in row.find_all("td")]
    what = key["resting_for"] if key["resting_for"] not in ("", "*") else "all models"
    assert any(what in text and "(in " in text for text in cells), cells
    if key["last_error"].strip():
        assert any(key["last_error"].strip() in text for text in cells), cells
    for other in keys:
        if other is not key:
            assert doc.find("tr", data_key="fake/" + other["key"]).find(
                "td", cls="health").text == "ok"
