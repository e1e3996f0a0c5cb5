"""End to end in a real browser: the review page served on 127.0.0.1 by uvicorn, driven by Playwright with
Debian's Chromium (``.ci/run`` installs it; Playwright's own browser downloads are never used).

With ``LESIONFORGE_SCREENSHOTS=<folder>`` the test also saves the screenshots of docs/review.md there
(``review-grid.png``, ``review-blinded.png``, ``review-blinded-results.png``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from review_data import make_review_set

from lesionforge.data.manifest import read_manifest
from lesionforge.review.app import create_app
from lesionforge.review.blinded import BlindedSession
from lesionforge.review.server import serve_in_thread
from lesionforge.review.store import ReviewSet

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (dev extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install "
                                                         "chromium; .ci/run does it)")
SHOTS = os.environ.get("LESIONFORGE_SCREENSHOTS")


@pytest.fixture
def served(tmp_path):
    set_dir, real = make_review_set(tmp_path)
    rs = ReviewSet.open(set_dir, real=real)
    blinded = BlindedSession.create(rs, n_per_origin=4, seed=3)
    with serve_in_thread(create_app(rs, blinded, default_reviewer="alice")) as url:
        yield url, set_dir, blinded


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


def _settle(page) -> None:
    """Wait until the page has loaded its data and every write it sent has been answered (by selectors, not
    by evaluating script: the pages' Content-Security-Policy forbids eval, which Playwright's waits would use)."""
    page.locator("body[data-ready='1']:not([data-pending]), body[data-ready='1'][data-pending='0']").wait_for()


def _reviews(set_dir: Path) -> dict:
    return {s.id: {r: e["decision"] for r, e in (s.provenance.reviews or {}).items()}
            for s in read_manifest(set_dir / "manifest.filtered.jsonl")}


def _shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=False)


def test_review_grid_keyboard_writes_manifest(served, browser):
    url, set_dir, _ = served
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(r.url))
    page.goto(f"{url}/?reviewer=alice")
    _settle(page)
    assert page.locator(".card").count() == 6 and page.locator(".badge.flag").count() == 1
    raw = page.locator('.card[data-id="syn0"] a').get_attribute("href")
    assert raw == "/file/images/syn0.png" and page.request.get(url + raw).body()[:4] == b"\x89PNG"
    for key in ("a", "r", "a", "u"):  # syn0 accepted, syn1 rejected, syn2 accepted then undone
        page.keyboard.press(key)
    _settle(page)
    assert _reviews(set_dir)["syn0"] == {"alice": "accepted"} and _reviews(set_dir)["syn1"] == {"alice": "rejected"}
    assert _reviews(set_dir)["syn2"] == {}
    assert page.locator('.card[data-id="syn0"]').get_attribute("class").split()[-1] == "accepted"
    page.keyboard.press("ArrowRight")  # undo selected syn2 again; two steps on to syn4
    page.keyboard.press("j")
    page.keyboard.press("r")  # syn4 (the filter rejected it too)
    page.keyboard.press("a")  # syn5: the planted near copy, accepted here to show the badge in the screenshot
    _settle(page)
    assert _reviews(set_dir)["syn4"] == {"alice": "rejected"} and _reviews(set_dir)["syn5"] == {"alice": "accepted"}
    page.keyboard.press("k")
    _shot(page, "review-grid.png")

    bob = browser.new_page()  # a second reviewer: kept apart from the first
    bob.goto(f"{url}/?reviewer=bob")
    _settle(bob)
    assert bob.locator(".badge.dec-accepted").count() == 0
    bob.keyboard.press("r")
    _settle(bob)
    assert _reviews(set_dir)["syn0"] == {"alice": "accepted", "bob": "rejected"}
    assert not errors, errors

    # a page of another origin (localhost vs 127.0.0.1), even holding the session token, cannot write
    # (bypass_csp only lets this test run its script in that page; the server's checks are unchanged)
    other = browser.new_context(bypass_csp=True).new_page()
    other.goto(url.replace("127.0.0.1", "localhost") + "/?reviewer=eve")
    _settle(other)
    status = other.evaluate("""async (target) => {
        const token = document.querySelector('meta[name="review-token"]').content;
        try {
          const r = await fetch(target + '/api/decision', {method: 'POST', headers: {'Content-Type':
            'application/json', 'X-Review-Token': token}, body: JSON.stringify({reviewer: 'eve', id: 'syn3',
            decision: 'rejected'})});
          return r.status;
        } catch (e) { return 'blocked'; }
    }""", url)
    assert status in ("blocked", 403)
    assert _reviews(set_dir)["syn3"] == {}


def test_blinded_two_scripted_raters(served, browser):
    url, set_dir, blinded = served
    truth = {it.token: it.origin for it in blinded.items}
    flip = {"real": "synthetic", "synthetic": "real"}
    wrong = {next(t for t, o in truth.items() if o == "real"), next(t for t, o in truth.items() if o == "synthetic")}
    for rater in ("r1", "r2"):
        page = browser.new_page(viewport={"width": 1100, "height": 860})
        page.goto(f"{url}/blinded?rater={rater}")
        _settle(page)
        html = page.content()
        assert "syn0" not in html and "demo_" not in html and ".png" not in html  # only tokens reach the page
        for step in range(len(truth)):
            token = page.locator("#image").get_attribute("src").split("/")[-1].split("?")[0]
            call = flip[truth[token]] if rater == "r2" and token in wrong else truth[token]
            if rater == "r1":
                page.keyboard.press("4")  # mask fit score
            if rater == "r2" and step == 2:
                _shot(page, "review-blinded.png")
            page.keyboard.press("r" if call == "real" else "s")
        _settle(page)
        assert page.locator("#done").is_visible()
    page.goto(f"{url}/blinded/results")
    _settle(page)
    cells = {r.locator("td").first.inner_text(): [c.inner_text() for c in r.locator("td").all()]
             for r in page.locator("#raters tbody tr").all()}
    assert cells["r1"][3] == "1.000" and cells["r2"][3] == "0.750" and cells["r2"][4] == "0.409 – 0.929"
    assert cells["r1"][8] == "4.00"
    assert page.locator("#pairs tbody td").nth(2).inner_text() == "0.500"  # Cohen's kappa r1 vs r2
    _shot(page, "review-blinded-results.png")
    assert len(blinded.load()["ratings"]["r2"]) == 8
