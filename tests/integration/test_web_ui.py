"""The management web UI (issue 14 item 3) in a real browser, against 1 and 3 workers.

Owns: a broker with its management port (``ui``), a headless Debian ``chromium``
driven through ``chromedriver`` by selenium (``browser``), and the checks: a queue made
by pika shows its message count in the queues table, is purged through the UI and shows
0 (and really is empty over AMQP); filter and sort of that table; a user without a
management tag cannot log in (the UI shows the broker's 401 reason); no cookie is set;
the static files and path-traversal attempts over plain HTTP. A screenshot of each run
is saved under the test's tmp dir (path printed) and copied to ``test-artifacts/``.

Invariants: only 127.0.0.1 is contacted (chromium runs with background networking,
component updates and sync off, in a fresh profile); every wait is a bounded poll, never
a timing assertion; skipped, saying why, only when chromium or chromedriver is not
installed (``.ci/run`` installs them), or on an external broker (the UI is shardmq's).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pika
import pytest

from tests.support.launch import REPO_ROOT, serve_args, spawn, terminate, wait_answering
from tests.support.ports import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO_ROOT / "test-artifacts"
WAIT = 20.0
N = 25

pytestmark = [
    pytest.mark.skipif(
        bool(os.environ.get("SHARDMQ_TEST_URI") or os.environ.get("SHARDMQ_TEST_MGMT_URL")),
        reason="the web UI is shardmq's own; an external broker (SHARDMQ_TEST_URI) serves its own",
    ),
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
        reason="Debian's chromium and chromium-driver are not installed "
        "(apt-get install chromium chromium-driver; .ci/run installs them)",
    ),
]


@dataclass
class Ui:
    url: str  # http://127.0.0.1:PORT
    amqp_port: int
    workers: int

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with urllib (``path`` sent as it is: no normalisation)."""
        req = Request(self.url + path, method=method, headers=headers or {})
        if body is not None:
            req.data = json.dumps(body).encode()
            req.add_header("content-type", "application/json")
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def pika(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.amqp_port))


@pytest.fixture(scope="module", params=[1, 3], ids=["1w", "3w"])
def ui(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    tmp = tmp_path_factory.mktemp("webui")
    port, mport = free_port(), free_port()
    cfg = tmp / "shardmq.toml"
    cfg.write_text(f'[management]\nhost = "127.0.0.1"\nport = {mport}\n')
    log = tmp / "broker.log"
    proc = spawn(serve_args(port, request.param, tmp / "data", cfg), log)
    wait_answering(proc, port, lambda: log.read_text(errors="replace"), lambda: terminate(proc, 10))
    try:
        yield Ui(f"http://127.0.0.1:{mport}", port, request.param)
    finally:
        code = terminate(proc, 20)
    text = log.read_text(errors="replace")
    assert code == 0 and "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless chromium through chromedriver (selenium; no driver or browser download:
    both are Debian's)."""
    from selenium import webdriver  # not at collection
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(log)), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------- helpers
def _name(kind: str) -> str:
    return f"ui-{kind}-{uuid.uuid4().hex[:10]}"


def wait_for(driver: Any, what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """``check()`` once it is truthy; fails saying ``what`` with the page's state."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (StaleElementReferenceException, WebDriverException) as exc:
            last = exc  # the table was redrawn under us: look again
        else:
            if last:
                return last
        time.sleep(0.1)
    body = driver.find_element("tag name", "body").text
    pytest.fail(f"timed out waiting for {what} (last: {last!r}); page text:\n{body[:2000]}")


def text_of(driver: Any, css: str) -> str | None:
    els = driver.find_elements("css selector", css)
    return els[0].text.strip() if els else None


def css_str(s: str) -> str:
    return json.dumps(s)  # a CSS string literal for the names used here (no quotes inside)


def log_in(driver: Any, ui: Ui, user: str, password: str) -> None:
    driver.get(ui.url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(ui.url + "/#/")
    wait_for(driver, "the login form", lambda: driver.find_element("id", "login").is_displayed())
    driver.find_element("id", "login-username").send_keys(user)
    driver.find_element("id", "login-password").send_keys(password)
    driver.find_element("id", "login-submit").click()


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / name)
    print(f"screenshot: {shot} (copy: {ARTIFACTS / name})")
    return shot


def js_errors(driver: Any) -> list[str]:
    """Console errors other than the API's own refusals (a 401 answer is logged too)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and e.get("source") != "network"
    ]


# ---------------------------------------------------------------------- tests
def test_queue_count_and_purge_in_browser(ui: Ui, browser: Any, tmp_path: Path) -> None:
    queue = _name("q")
    other = _name("q") + '<img src=x onerror="window.pwned=1">'  # shown as text, never run
    conn = ui.pika()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue)
        ch.queue_declare(other)
        for i in range(N):
            ch.basic_publish("", queue, f"m{i}".encode())
        ch.basic_publish("", other, b"x")
        browser.get_log("browser")  # start the console log afresh

        log_in(browser, ui, "guest", "guest")
        wait_for(
            browser, "the navigation", lambda: browser.find_element("id", "nav").is_displayed()
        )
        assert browser.get_cookies() == []  # credentials live in sessionStorage only
        browser.find_element("css selector", '#nav a[data-page="queues"]').click()

        row = f"#queues tr[data-name={css_str(queue)}]"
        wait_for(
            browser,
            f"{N} messages in the table",
            lambda: text_of(browser, f"{row} td.messages") == str(N),
        )
        assert text_of(browser, f"{row} td.messages_ready") == str(N)
        assert text_of(browser, f"{row} td.messages_unacknowledged") == "0"

        # filterable: the other queue's row goes away; sortable: Total, largest first
        other_row = f"#queues tr[data-name={css_str(other)}]"
        wait_for(browser, "1 message", lambda: text_of(browser, f"{other_row} td.messages") == "1")
        assert text_of(browser, f"{other_row} td.name") == other
        assert browser.execute_script("return window.pwned") is None
        browser.find_element("css selector", '#queues th[data-key="messages"]').click()
        names = [
            r.get_attribute("data-name")
            for r in browser.find_elements("css selector", "#queues tbody tr")
        ]
        assert names.index(queue) < names.index(other), names
        browser.find_element("id", "queues-filter").send_keys(queue)
        wait_for(
            browser, "the filter", lambda: not browser.find_elements("css selector", other_row)
        )
        assert text_of(browser, f"{row} td.messages") == str(N)

        # the queue's page: purge through the UI
        browser.find_element("css selector", f"{row} a.queue-link").click()
        wait_for(browser, "the queue page", lambda: text_of(browser, "#queue-name") == queue)
        wait_for(
            browser, "its count", lambda: text_of(browser, "#queue-details td.messages") == str(N)
        )
        screenshot(browser, tmp_path, f"web-ui-queue-{ui.workers}w.png")
        browser.find_element("id", "purge").click()
        wait_for(browser, "the purge", lambda: text_of(browser, "#queue-status") == "Queue purged.")
        wait_for(
            browser, "a count of 0", lambda: text_of(browser, "#queue-details td.messages") == "0"
        )
        assert ch.queue_declare(queue, passive=True).method.message_count == 0
        assert ch.queue_declare(other, passive=True).method.message_count == 1

        browser.find_element("css selector", '#nav a[data-page="queues"]').click()
        wait_for(browser, "0 in the table", lambda: text_of(browser, f"{row} td.messages") == "0")
        screenshot(browser, tmp_path, f"web-ui-queues-{ui.workers}w.png")
        browser.find_element("css selector", '#nav a[data-page="overview"]').click()
        wait_for(browser, "the overview's totals", lambda: text_of(browser, "#total-queues"))
        screenshot(browser, tmp_path, f"web-ui-overview-{ui.workers}w.png")
        assert js_errors(browser) == []
        ch.queue_delete(queue)
        ch.queue_delete(other)
    finally:
        conn.close()


def submit_form(driver: Any, form_id: str, values: dict[str, str]) -> None:
    """Fill the named fields of form ``form_id`` (text or select) and submit it."""
    from selenium.webdriver.support.select import Select

    for name, value in values.items():
        el = driver.find_element("css selector", f"#{form_id} [name={name}]")
        if el.tag_name == "select":
            Select(el).select_by_value(value)
        else:
            el.clear()
            el.send_keys(value)
    driver.find_element("css selector", f"#{form_id} button[type=submit]").click()


def accept_confirm(driver: Any) -> None:
    alert = wait_for(driver, "the confirm dialog", lambda: _alert(driver))
    alert.accept()


def _alert(driver: Any) -> Any:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def test_manage_objects_in_browser(ui: Ui, browser: Any) -> None:
    """Add a queue, get from it, delete it; add and delete a vhost and a user."""
    queue, vhost, user = _name("q"), _name("vhost"), _name("user")
    admin = ("guest", "guest")
    browser.get_log("browser")
    log_in(browser, ui, *admin)
    wait_for(browser, "the navigation", lambda: browser.find_element("id", "nav").is_displayed())
    browser.find_element("css selector", '#nav a[data-page="queues"]').click()
    wait_for(
        browser,
        "the vhost choice",
        lambda: browser.find_elements("css selector", "#add-queue option[value='/']"),
    )
    submit_form(browser, "add-queue", {"name": queue, "durable": "Transient"})
    row = f"#queues tr[data-name={css_str(queue)}]"
    wait_for(browser, "the new queue", lambda: text_of(browser, f"{row} td.messages") == "0")

    conn = ui.pika()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", queue, f"p{i}".encode())
    finally:
        conn.close()
    browser.find_element("css selector", f"{row} a.queue-link").click()
    wait_for(browser, "3 messages", lambda: text_of(browser, "#queue-details td.messages") == "3")
    submit_form(browser, "get", {"count": "2", "ackmode": "ack_requeue_true"})
    got = "#got-messages pre.payload"
    wait_for(
        browser, "two messages got", lambda: len(browser.find_elements("css selector", got)) == 2
    )
    assert [e.text for e in browser.find_elements("css selector", got)] == ["p0", "p1"]
    wait_for(
        browser, "them requeued", lambda: text_of(browser, "#queue-details td.messages") == "3"
    )

    # publish through the UI (POST /api/exchanges/%2F/amq.default/publish): routed, counted
    submit_form(browser, "publish", {"payload": "from the UI"})
    wait_for(
        browser,
        "the publish answered",
        lambda: text_of(browser, "#publish .form-status") == "Message published.",
    )
    wait_for(browser, "4 messages", lambda: text_of(browser, "#queue-details td.messages") == "4")

    browser.find_element("id", "delete").click()
    accept_confirm(browser)
    wait_for(browser, "the queues page", lambda: browser.current_url.endswith("#/queues"))
    qpath = f"/api/queues/%2F/{queue}"
    wait_for(browser, "the queue gone", lambda: ui.http("GET", qpath, auth=admin)[0] == 404)

    exchange = _name("ex")
    browser.find_element("css selector", '#nav a[data-page="exchanges"]').click()
    wait_for(
        browser,
        "the vhost choice",
        lambda: browser.find_elements("css selector", "#add-exchange option[value='/']"),
    )
    submit_form(browser, "add-exchange", {"name": exchange, "type": "topic"})
    xrow = f"#exchanges tr[data-name={css_str(exchange)}]"
    wait_for(browser, "the new exchange", lambda: text_of(browser, f"{xrow} td.type") == "topic")
    assert ui.http("GET", f"/api/exchanges/%2F/{exchange}", auth=admin)[0] == 200
    assert not browser.find_elements("css selector", '#exchanges tr[data-name="amq.topic"] button')
    browser.find_element("css selector", f"{xrow} button.danger").click()
    accept_confirm(browser)
    wait_for(browser, "the exchange gone", lambda: not browser.find_elements("css selector", xrow))
    assert ui.http("GET", f"/api/exchanges/%2F/{exchange}", auth=admin)[0] == 404

    browser.find_element("css selector", '#nav a[data-page="vhosts"]').click()
    submit_form(browser, "add-vhost", {"name": vhost})
    vrow = f"#vhosts tr[data-name={css_str(vhost)}]"
    wait_for(browser, "the new vhost", lambda: browser.find_elements("css selector", vrow))
    assert ui.http("GET", f"/api/vhosts/{vhost}", auth=admin)[0] == 200

    browser.find_element("css selector", '#nav a[data-page="users"]').click()
    submit_form(browser, "add-user", {"name": user, "password": "pw", "tags": "monitoring"})
    urow = f"#users tr[data-name={css_str(user)}]"
    wait_for(browser, "the new user", lambda: text_of(browser, f"{urow} td.tags") == "monitoring")
    status, _, body = ui.http("GET", "/api/whoami", auth=(user, "pw"))
    assert status == 200 and json.loads(body)["tags"] == ["monitoring"], body
    browser.find_element("css selector", f"{urow} button.danger").click()
    accept_confirm(browser)
    wait_for(browser, "the user gone", lambda: not browser.find_elements("css selector", urow))
    assert ui.http("GET", f"/api/users/{user}", auth=admin)[0] == 404

    browser.find_element("css selector", '#nav a[data-page="vhosts"]').click()
    wait_for(browser, "the vhost row", lambda: browser.find_elements("css selector", vrow))
    browser.find_element("css selector", f"{vrow} button.danger").click()
    accept_confirm(browser)
    wait_for(browser, "the vhost gone", lambda: not browser.find_elements("css selector", vrow))
    assert ui.http("GET", f"/api/vhosts/{vhost}", auth=admin)[0] == 404
    assert js_errors(browser) == []


def test_close_connection_in_browser(ui: Ui, browser: Any) -> None:
    """The connections page lists a pika connection by its client-provided name and
    closes it: the client gets 320 with the UI's reason."""
    label = _name("conn")
    params = pika.ConnectionParameters(
        "127.0.0.1", ui.amqp_port, client_properties={"connection_name": label}
    )
    conn = pika.BlockingConnection(params)
    try:
        log_in(browser, ui, "guest", "guest")
        wait_for(
            browser, "the navigation", lambda: browser.find_element("id", "nav").is_displayed()
        )
        browser.find_element("css selector", '#nav a[data-page="connections"]').click()

        def row() -> Any:
            for tr in browser.find_elements("css selector", "#connections tbody tr"):
                if tr.find_elements("css selector", "td.client") and (
                    tr.find_element("css selector", "td.client").text == label
                ):
                    return tr
            return None

        tr = wait_for(browser, "the connection's row", row)
        assert tr.find_element("css selector", "td.user").text == "guest"
        tr.find_element("css selector", "button.close-connection").click()
        accept_confirm(browser)
        wait_for(browser, "the row gone", lambda: row() is None)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
        assert info.value.reply_code == 320
        assert "Closed via management UI" in info.value.reply_text
    finally:
        if conn.is_open:
            conn.close()


def test_overview_in_browser(ui: Ui, browser: Any) -> None:
    """The overview shows /api/overview's totals and queued messages, and a line per
    message rate once the broker reports ``message_stats``."""
    admin = ("guest", "guest")
    queue = _name("q")
    conn = ui.pika()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue)
        for _ in range(7):
            ch.basic_publish("", queue, b"o")

        def api() -> dict[str, Any]:
            data: dict[str, Any] = json.loads(ui.http("GET", "/api/overview", auth=admin)[2])
            return data

        # the API's figures as they are when the page shows them (3 workers: a
        # publish reaches its queue's owner a moment after its confirm)
        def shows(css: str, value: Callable[[dict[str, Any]], int]) -> Callable[[], bool]:
            return lambda: text_of(browser, css) == f"{value(api()):,}"

        log_in(browser, ui, *admin)
        wait_for(browser, "the overview", lambda: text_of(browser, "#total-queues b"))
        for key in ("queues", "exchanges", "connections"):
            wait_for(
                browser,
                f"the {key} total",
                shows(f"#total-{key} b", lambda o, k=key: int(o["object_totals"][k])),
            )
        total = '#legend-queued b[data-series="Total"]'
        queued = shows(total, lambda o: int(o["queue_totals"]["messages"]))
        wait_for(
            browser, "the queued total", lambda: queued() and api()["queue_totals"]["messages"] >= 7
        )
        overview = api()
        if not overview.get("message_stats"):
            pytest.skip("this broker reports no message_stats yet (issue 14 item 2)")
        publish = '#legend-rates b[data-series="Publish"]'
        wait_for(
            browser, "the publish rate", lambda: (text_of(browser, publish) or "").endswith("/s")
        )
        browser.find_element("css selector", '#nav a[data-page="queues"]').click()
        wait_for(
            browser, "the rate columns", lambda: text_of(browser, '#queues th[data-key="rate_in"]')
        )
    finally:
        conn.channel().queue_delete(queue)
        conn.close()


def test_login_refused_without_management_tag(ui: Ui, browser: Any, tmp_path: Path) -> None:
    user = _name("user")
    status, _, body = ui.http(
        "PUT", f"/api/users/{user}", {"password": "pw", "tags": ""}, ("guest", "guest")
    )
    assert status == 201, body
    try:
        log_in(browser, ui, user, "pw")
        wait_for(
            browser, "the refusal", lambda: browser.find_element("id", "login-error").is_displayed()
        )
        assert text_of(browser, "#login-error") == "Login failed: Not management user"
        assert not browser.find_element("id", "nav").is_displayed()
        assert browser.execute_script("return sessionStorage.length") == 0
        screenshot(browser, tmp_path, f"web-ui-refused-{ui.workers}w.png")

        log_in(browser, ui, "guest", "wrong")
        wait_for(
            browser,
            "the refusal",
            lambda: text_of(browser, "#login-error") == "Login failed: Login failed",
        )
        assert browser.get_cookies() == []
    finally:
        ui.http("DELETE", f"/api/users/{user}", auth=("guest", "guest"))


def test_management_user_sees_no_admin_pages(ui: Ui, browser: Any) -> None:
    """A user tagged management logs in and sees its vhost's queues, but neither the
    users nor the vhosts page (the broker refuses those to it anyway)."""
    admin = ("guest", "guest")
    user, queue = _name("user"), _name("q")
    assert (
        ui.http("PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"}, admin)[0]
        == 201
    )
    perm = {"configure": ".*", "write": ".*", "read": ".*"}
    assert ui.http("PUT", f"/api/permissions/%2F/{user}", perm, admin)[0] == 201
    assert ui.http("PUT", f"/api/queues/%2F/{queue}", {"durable": False}, admin)[0] == 201
    try:
        log_in(browser, ui, user, "pw")
        wait_for(
            browser, "the navigation", lambda: browser.find_element("id", "nav").is_displayed()
        )
        assert text_of(browser, "#whoami") == user
        for page in ("users", "vhosts"):
            assert not browser.find_element(
                "css selector", f'#nav a[data-page="{page}"]'
            ).is_displayed()
        browser.find_element("css selector", '#nav a[data-page="queues"]').click()
        row = f"#queues tr[data-name={css_str(queue)}]"
        wait_for(browser, "its queue", lambda: text_of(browser, f"{row} td.messages") == "0")
        browser.get(ui.url + "/#/users")
        wait_for(
            browser, "the refusal", lambda: text_of(browser, "#app h1") == "Administrators only"
        )
        browser.find_element("id", "logout").click()
        wait_for(
            browser, "the login form", lambda: browser.find_element("id", "login").is_displayed()
        )
        assert browser.execute_script("return sessionStorage.length") == 0
    finally:
        ui.http("DELETE", f"/api/queues/%2F/{queue}", auth=admin)
        ui.http("DELETE", f"/api/users/{user}", auth=admin)


def test_static_files_and_traversal(ui: Ui) -> None:
    for path, kind in [
        ("/", "text/html"),
        ("/index.html", "text/html"),
        ("/js/app.js", "text/javascript"),
        ("/css/main.css", "text/css"),
        ("/img/logo.svg", "image/svg+xml"),
    ]:
        status, headers, body = ui.http("GET", path)  # no credentials needed
        assert status == 200 and headers["Content-Type"].startswith(kind), (path, status)
        assert "Set-Cookie" not in headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert body
    secret = (REPO_ROOT / "shardmq" / "config.py").read_bytes()[:200]
    for path in [
        "/js/..%2F..%2Fconfig.py",
        "/js/..%2f..%2f..%2fshardmq%2fconfig.py",
        "/js/%2e%2e/%2e%2e/shardmq/config.py",
        "/js/../../shardmq/config.py",
        "/js/%2e%2e%2f%2e%2e%2fshardmq%2fconfig.py",
        "/css/..%5c..%5cconfig.py",
        "/js/.hidden",
        "/js/app.js%00.css",
        "/js/nothere.js",
        "/img/%2Fetc%2Fpasswd",
        "/js//etc/passwd",
        "/../../etc/passwd",
        "/index.html/../../etc/passwd",
    ]:
        for auth in (None, ("guest", "guest")):
            status, _, body = ui.http("GET", path, auth=auth)
            assert status in (401, 404), (path, auth, status)
            assert secret not in body and b"root:" not in body, path
    # the API itself still needs credentials
    assert ui.http("GET", "/api/overview")[0] == 401
    assert ui.http("GET", "/api/overview", auth=("guest", "guest"))[0] == 200


def test_cross_site_requests_refused(ui: Ui) -> None:
    """A page of another site cannot use credentials the browser holds (issue 14
    item 7): its requests to /api are refused before anything changes."""
    admin = ("guest", "guest")
    vhost = _name("vhost")
    own = ui.url  # http://127.0.0.1:PORT: the UI's own origin
    for headers in [
        {"Origin": "http://evil.example"},
        {"Origin": own.replace("127.0.0.1", "localhost")},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": own},  # another port of this host
    ]:
        status, _, body = ui.http("PUT", f"/api/vhosts/{vhost}", {}, admin, headers)
        assert status == 403, (headers, status, body)
        assert json.loads(body) == {"error": "forbidden", "reason": "cross-site request refused"}
        assert ui.http("GET", f"/api/vhosts/{vhost}", auth=admin)[0] == 404  # nothing changed
    # the UI's own requests, the user's own navigation, and non-browser clients pass
    same = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
    assert ui.http("PUT", f"/api/vhosts/{vhost}", {}, admin, same)[0] == 201
    assert ui.http("GET", "/api/overview", auth=admin, headers={"Sec-Fetch-Site": "none"})[0] == 200
    assert ui.http("DELETE", f"/api/vhosts/{vhost}", auth=admin)[0] == 204
    # the static files are not data: a link from another site opens the UI
    assert ui.http("GET", "/", headers={"Sec-Fetch-Site": "cross-site"})[0] == 200


def test_package_data_covers_the_ui() -> None:
    """Every file of the UI is in the wheel's package data, and every file the page
    loads (index.html's src/href, each module's imports) is there."""
    import fnmatch
    import re
    import tomllib

    www = REPO_ROOT / "shardmq" / "www"
    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["shardmq"]
    files = [p.relative_to(www.parent).as_posix() for p in www.rglob("*") if p.is_file()]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert missing == [], "not in [tool.setuptools.package-data]"
    index = (www / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"#:]+)"', index)
    for js in www.glob("js/*.js"):
        refs += [f"js/{m}" for m in re.findall(r'from "\./([^"]+)"', js.read_text())]
    assert "js/app.js" in refs
    assert [r for r in refs if not (www / r).is_file()] == []
    # no inline script or handler: the Content-Security-Policy forbids them
    assert "<script>" not in index and " onclick=" not in index
    markup = re.compile(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write")
    assert [js.name for js in www.glob("js/*.js") if markup.search(js.read_text())] == []
