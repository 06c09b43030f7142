"""The dashboard end to end in a real headless Chromium (Debian's, driven by Playwright; no browser
download) against `fleet serve` (a subprocess) with a real Mosquitto and simulated devices
(`edge-sim fleet`).

Writes screenshots to build/screenshots/ (dashboard.png, dashboard-phone.png); with
LINESIDE_DOCS_SCREENSHOT=1 the main one is also copied to docs/dashboard.png for reviewers.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fleet_support import FleetServer, SimFleetProcess, make_bundle, make_keys, wait_for
from tests.mqtt import Mosquitto, find_mosquitto
from tests.pg_support import require_program

pytestmark = pytest.mark.integration

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "build" / "screenshots"
CHROMIUM = os.environ.get("LINESIDE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEVICES = ["sim-1", "sim-2", "sim-3"]
WAIT_MS = 20_000


class Stack:
    """The running system: broker, server (with releases 1.0.0–3.0.0), devices, and two tokens."""

    def __init__(self, server: FleetServer, viewer_token: str) -> None:
        self.server = server
        self.url = server.url
        self.admin_token = server.token
        self.viewer_token = viewer_token

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.request(method, f"{self.url}/api/v1{path}", headers=headers, timeout=10, **kw)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not Path(CHROMIUM).exists():
        require_program(
            f"Chromium at {CHROMIUM}", "apt-get install chromium, or scripts/ensure-package.sh chromium"
        )
    binary = find_mosquitto()
    if binary is None:
        require_program("the mosquitto binary", "install it: `make mosquitto`, or apt-get install mosquitto")
    tmp = tmp_path_factory.mktemp("dashboard")
    broker = Mosquitto(binary, tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    started: list[Any] = []
    try:
        keys = make_keys(tmp)
        server = FleetServer(tmp, broker.url, keys)
        started.append(server)
        server.start()
        for v in ("1.0.0", "2.0.0", "3.0.0"):
            server.cli(
                "release",
                str(make_bundle(tmp, v)),
                "--keys",
                str(keys),
                "--server",
                server.url,
                "--token",
                server.token,
            )
        sim_args = [
            "--devices",
            "3",
            "--window",
            "0.3",
            "--fps",
            "20",
            "--probation",
            "0.5",
            "--truth-share",
            "1.0",  # every decision checked: the field-accuracy gate gets its minimum counts within seconds
        ]
        sim = SimFleetProcess(tmp, broker.url, *sim_args, "--server", server.url)
        started.append(sim)
        sim.start()
        r = httpx.post(
            f"{server.url}/api/v1/tokens",
            json={"role": "viewer", "name": "wall screen"},
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        out = Stack(server, r.json()["token"])

        def baseline_ready() -> bool:
            devs = out.api("GET", "/devices").json()
            if sorted(d["device_id"] for d in devs if d["online"]) != DEVICES:
                return False
            return all(len(out.api("GET", f"/devices/{d}").json()["recent_telemetry"]) >= 4 for d in DEVICES)

        wait_for(baseline_ready, 30, "3 devices online with telemetry")
        yield out
    finally:
        for p in reversed(started):
            p.stop()
        for p in started:
            print(f"--- {type(p).__name__} log ---\n{p.log()[-4000:]}")
        broker.stop()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser: Any, stack: Stack, token: str, width: int = 1280, height: int = 1000) -> Any:
    """A fresh tab (own sessionStorage), signed in with the keyboard: type the token, press Enter."""
    ctx = browser.new_context(viewport={"width": width, "height": height})
    page = ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(stack.url + "/")
    sync_api.expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#app")).to_be_visible()
    return page


@pytest.fixture
def admin_page(browser: Any, stack: Stack) -> Iterator[Any]:
    page = _open(browser, stack, stack.admin_token)
    yield page
    assert page.errors == [], page.errors
    page.context.close()


def _shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_device_list_appears(admin_page: Any) -> None:
    page = admin_page
    sync_api.expect(page.locator("#role-badge")).to_have_text("admin")
    rows = page.locator("#devices-body tr")
    sync_api.expect(rows).to_have_count(3)
    assert [r.get_attribute("data-device") for r in rows.all()] == DEVICES
    for row in rows.all():
        sync_api.expect(row.locator('td[data-label="Online"]')).to_have_text("online")
        sync_api.expect(row.locator('td[data-label="Model"]')).to_contain_text("shapes@")
        sync_api.expect(row.locator('td[data-label="Health"] .pill')).to_have_text(re.compile(r"\w+"))
    sync_api.expect(page.locator("#devices-count")).to_have_text("(3 of 3 online)")
    sync_api.expect(page.locator("#models-body tr")).to_have_count(3)
    sync_api.expect(page.locator("#status")).to_contain_text("Live")


def test_field_accuracy_table_shows_the_fleets_numbers(admin_page: Any, stack: Stack) -> None:
    page = admin_page
    rows = page.locator("#accuracy-body tr")
    sync_api.expect(rows.first).to_be_visible()
    sync_api.expect(page.locator("#accuracy-empty")).to_be_hidden()
    devices = {r.get_attribute("data-device") for r in rows.all()}
    assert devices <= set(DEVICES) and devices
    # One row, checked against the API: the page polls, so read both until they agree.
    row = rows.first
    model, device = row.get_attribute("data-model"), row.get_attribute("data-device")

    def agree() -> bool:
        api = stack.api("GET", "/accuracy", params={"by_device": "true"}).json()
        want = next(a for a in api if a["model"] == model and a["device_id"] == device)
        shown = row.locator('td[data-label="Truth"]').inner_text()
        acc = row.locator('td[data-label="Accuracy"]').inner_text()
        return shown == str(want["n"]) and acc.endswith("%") and want["n"] > 0

    wait_for(agree, 20, "the accuracy table agrees with the API")


def test_labelling_page_labels_with_one_key_and_adds_a_new_label(admin_page: Any, stack: Stack) -> None:
    from tests.test_samples_store import body, jpeg, meta

    token = stack.api("POST", "/devices/sim-1/token").json()["token"]
    pks = []
    for i in range(2):
        sid = f"000009-{i:012d}"
        r = httpx.put(
            f"{stack.url}/api/v1/devices/sim-1/samples/{sid}",
            content=body(meta("sim-1", sid, taken_at=1_800_000_000.0 + i), jpeg(100 + i)),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-lineside-sample"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        pks.append(r.json()["sample"]["id"])

    def true_label(pk: int) -> Any:
        return stack.api("GET", f"/samples/{pk}").json()["true_label"]

    page = admin_page
    box = page.locator("#labelling-box")
    sync_api.expect(box).to_be_visible()
    buttons = page.locator("#labelling-buttons button")
    sync_api.expect(buttons).to_have_count(3)  # the released models' labels
    first = int(box.get_attribute("data-sample") or 0)
    assert first in pks
    wait_for(
        lambda: page.locator("#labelling-image").evaluate("img => img.naturalWidth") > 0,
        20,
        "the frame shown",
    )
    sync_api.expect(page.locator("#labelling-guess")).to_contain_text("box")

    # One key: 2 is the second label (sorted), square-80.
    page.locator("#labelling-h").click()
    page.keyboard.press("2")
    wait_for(lambda: true_label(first) == "square-80", 20, "the first sample labelled by key")
    sync_api.expect(box).not_to_have_attribute("data-sample", str(first))
    second = int(box.get_attribute("data-sample") or 0)
    assert second in pks and second != first

    # A label the line has not seen before.
    page.locator("#labelling-new-label").fill("crate")
    page.locator("#labelling-new button").click()
    wait_for(lambda: true_label(second) == "crate", 20, "the second sample labelled with a new label")
    sync_api.expect(page.locator("#labelling-empty")).to_be_visible()
    assert "crate" in stack.api("GET", "/samples/labels/known").json()


def test_chart_renders_data_points_and_updates_live(admin_page: Any) -> None:
    page = admin_page
    chart = page.locator("#chart-box svg.chart")
    sync_api.expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    sync_api.expect(page.locator("#chart-device")).to_have_value("sim-1")
    n = int(chart.get_attribute("data-points"))
    # One dot per window in each of the three panels (p50, low-confidence rate, fps).
    assert page.locator("#chart-box circle.pt-p50").count() == n
    assert page.locator("#chart-box circle.pt-low").count() == n
    assert page.locator("#chart-box circle.pt-fps").count() == n
    assert page.locator("#chart-box polyline.series").count() == 3
    # New telemetry arrives on screen without reloading.
    page.wait_for_function(
        "n => Number(document.querySelector('#chart-box svg.chart')?.dataset.points) > n", arg=n
    )
    # Keyboard: Enter on another device's Chart button switches the chart to it.
    page.focus("#chart-btn-sim-2")
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#chart-device")).to_have_value("sim-2")
    sync_api.expect(chart).to_have_attribute("aria-label", re.compile(r"^Chart for sim-2: \d+ windows"))
    sync_api.expect(page.locator("#chart-btn-sim-2")).to_have_attribute("aria-pressed", "true")
    # Focus survives the periodic redraw of the table.
    sync_api.expect(page.locator("#status")).not_to_have_text(page.locator("#status").inner_text())
    sync_api.expect(page.locator("#chart-btn-sim-2")).to_be_focused()


_RECORDER = """rid => {
  window.__seen = [];
  const snap = () => {
    const card = document.querySelector(`article[data-rollout="${rid}"]`);
    if (!card) return;
    const state = card.querySelector('[data-role="state"]').textContent;
    const counts = [...card.querySelectorAll('.stage-counts')].map(e => e.textContent);
    const last = window.__seen[window.__seen.length - 1];
    const now = JSON.stringify([state, counts]);
    if (!last || JSON.stringify(last) !== now) window.__seen.push([state, counts]);
  };
  snap();
  new MutationObserver(snap).observe(document.getElementById('rollouts-list'), {childList: true, subtree: true});
}"""


_WATCH_FORM = """() => {
  window.__rid = null;
  new MutationObserver(() => {
    const m = /rollout (r[0-9a-f]+)/.exec(document.getElementById('rollout-form-msg').textContent);
    if (m && !window.__rid) { window.__rid = m[1]; (RECORDER)(m[1]); }
  }).observe(document.getElementById('rollout-form-msg'), {childList: true, characterData: true, subtree: true});
}"""


def test_rollout_started_from_the_page_progresses_on_screen(admin_page: Any, stack: Stack) -> None:
    page = admin_page
    # The recorder keeps every distinct state of the card the page shows, from the first draw.
    page.evaluate(_WATCH_FORM.replace("RECORDER", _RECORDER))
    page.select_option("#rf-model", "shapes@2.0.0")
    page.fill("#rf-devices", "")  # every device
    page.fill("#rf-stages", "1,100%")
    page.fill("#rf-soak", "1s")
    page.fill("#rf-min-frames", "10")
    page.click("#rf-submit")
    msg = page.locator("#rollout-form-msg")
    sync_api.expect(msg).to_contain_text("Started rollout")
    rid = re.search(r"rollout (r[0-9a-f]+)", msg.inner_text()).group(1)  # type: ignore[union-attr]
    card = page.locator(f'article[data-rollout="{rid}"]')
    sync_api.expect(card.locator('[data-role="state"]')).to_have_text("succeeded", timeout=60_000)
    sync_api.expect(card.locator(".stage-counts")).to_have_text(["1/1 passed", "2/2 passed"])
    sync_api.expect(card.locator("table.gates")).to_contain_text("pass")
    seen = page.evaluate("window.__seen")
    assert seen[0][0] == "running", seen
    assert seen[-1] == ["succeeded", ["1/1 passed", "2/2 passed"]], seen
    assert len(seen) >= 2, seen

    def passed(counts: list[str]) -> int:
        return sum(int(c.split("/")[0]) for c in counts)

    assert [passed(c) for _, c in seen] == sorted(passed(c) for _, c in seen), seen
    assert stack.api("GET", f"/rollouts/{rid}").json()["state"] == "succeeded"
    # The device table follows: every device reports the new release.
    sync_api.expect(page.locator('#devices-body td[data-label="Model"]')).to_have_text(["shapes@2.0.0"] * 3)
    # The chart marks the release on the canary (from its events, or from the telemetry's model change
    # on a server without the events endpoint).
    page.select_option("#chart-device", "sim-1")
    sync_api.expect(page.locator("#chart-box line.mark-release").first).to_be_attached()
    sync_api.expect(page.locator("#chart-box text.mark-label-release").first).to_have_text("2.0.0")
    assert page.locator("#chart-box line.mark-rollback").count() == 0
    sync_api.expect(page.locator("#chart-box svg.chart")).to_have_attribute(
        "data-points", re.compile(r"^[1-9]\d*$")
    )
    path = _shot(page, "dashboard.png")
    if os.environ.get("LINESIDE_DOCS_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(path, REPO / "docs" / "dashboard.png")


def test_viewer_cannot_abort_a_rollout(browser: Any, admin_page: Any, stack: Stack) -> None:
    r = stack.api(
        "POST",
        "/rollouts",
        json={"model": "shapes@3.0.0", "devices": DEVICES, "stages": "1,100%", "soak": "10m"},
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    viewer = _open(browser, stack, stack.viewer_token)
    try:
        sync_api.expect(viewer.locator("#role-badge")).to_have_text("viewer")
        sync_api.expect(viewer.locator("#readonly-note")).to_be_visible()
        sync_api.expect(viewer.locator("#rollout-form")).to_be_hidden()
        card = viewer.locator(f'article[data-rollout="{rid}"]')
        sync_api.expect(card.locator('[data-role="state"]')).to_have_text("running")
        sync_api.expect(card.locator(".stages li")).to_have_count(2)
        assert card.locator("button").count() == 0
        assert viewer.get_by_role("button", name="Abort").count() == 0
        assert viewer.locator("#alerts-list button").count() == 0
        # The server refuses too, whoever asks: from the page's own origin and from outside.
        status = viewer.evaluate(
            """([rid, token]) => fetch(`/api/v1/rollouts/${rid}/abort`, {method: 'POST',
                 headers: {Authorization: `Bearer ${token}`}}).then(r => r.status)""",
            [rid, stack.viewer_token],
        )
        assert status == 403
        refused = stack.api("POST", f"/rollouts/{rid}/abort", token=stack.viewer_token)
        assert refused.status_code == 403 and "admin" in refused.json()["message"]
        assert stack.api("GET", f"/rollouts/{rid}").json()["state"] == "running"
        assert viewer.errors == [], viewer.errors
    finally:
        viewer.context.close()
    # An admin can: the Abort button (after a confirmation) stops it, on screen.
    admin_page.once("dialog", lambda d: d.accept())
    admin_card = admin_page.locator(f'article[data-rollout="{rid}"]')
    admin_card.get_by_role("button", name="Abort", exact=True).click()
    sync_api.expect(admin_card.locator('[data-role="state"]')).to_have_text("aborted")
    assert stack.api("GET", f"/rollouts/{rid}").json()["state"] == "aborted"


_CONTRAST = """() => {
  const parse = c => { const m = c.match(/[\\d.]+/g).map(Number); return {r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1}; };
  const lum = ({r, g, b}) => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                               return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const bg = el => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
                     if (c.a > 0.5) return c; } return {r: 255, g: 255, b: 255, a: 1}; };
  const bad = [];
  let checked = 0;
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('svg') || !el.checkVisibility()) continue;
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const st = getComputedStyle(el);
    if (Number(st.opacity) < 1) continue;
    const fg = lum(parse(st.color)), b = lum(bg(el));
    const ratio = (Math.max(fg, b) + 0.05) / (Math.min(fg, b) + 0.05);
    checked++;
    if (ratio < 4.5) bad.push(`${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
  }
  return {checked, bad};
}"""

_UNLABELLED = """() => [...document.querySelectorAll('input, select, button, textarea')]
  .filter(el => el.checkVisibility())
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
  .map(el => el.outerHTML.slice(0, 80))"""


def test_phone_width_contrast_and_labels(browser: Any, stack: Stack) -> None:
    page = _open(browser, stack, stack.admin_token, width=390, height=844)
    try:
        sync_api.expect(page.locator("#devices-body tr")).to_have_count(3)
        sync_api.expect(page.locator("#chart-box svg.chart")).to_have_attribute(
            "data-points", re.compile(r"^[1-9]\d*$")
        )
        # Nothing wider than the phone: no sideways scrolling of the page.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        # Table rows become cards: every cell visible within the viewport's width.
        box = page.locator("#devices-body tr").first.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        contrast = page.evaluate(_CONTRAST)
        assert contrast["checked"] > 20 and contrast["bad"] == [], contrast["bad"]
        assert page.evaluate(_UNLABELLED) == []
        _shot(page, "dashboard-phone.png")
        assert page.errors == [], page.errors
    finally:
        page.context.close()


def test_bad_token_is_refused_with_a_message(browser: Any, stack: Stack) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    try:
        page.goto(stack.url + "/")
        page.fill("#token", "lsf_not-a-real-token")
        page.get_by_role("button", name="Sign in").click()
        sync_api.expect(page.locator("#login-error")).to_have_text("Unknown token.")
        sync_api.expect(page.locator("#app")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('lineside.token')") is None
    finally:
        ctx.close()
