"""Review web application over HTTP (FastAPI's TestClient): decisions land in the manifest per reviewer,
undo restores, the blinded test hides everything but tokens and scores raters, and the security rules hold."""

from __future__ import annotations

import json

import pytest
from review_data import COPY_ID, make_review_set

pytest.importorskip("httpx", reason="httpx (dev extra) is needed for FastAPI's TestClient")
from fastapi.testclient import TestClient  # noqa: E402

from lesionforge.data.manifest import read_manifest  # noqa: E402
from lesionforge.review.app import TOKEN_HEADER, create_app  # noqa: E402
from lesionforge.review.blinded import BlindedSession  # noqa: E402
from lesionforge.review.store import ReviewSet  # noqa: E402

BASE = "http://127.0.0.1:8765"


@pytest.fixture
def review_set(tmp_path):
    return make_review_set(tmp_path)


@pytest.fixture
def client(review_set):
    set_dir, real = review_set
    rs = ReviewSet.open(set_dir, real=real)
    app = create_app(rs, BlindedSession.create(rs, n_per_origin=4, seed=3), token="tok")
    return TestClient(app, base_url=BASE)


def _post(client, url, body, **headers):
    return client.post(url, json=body, headers={TOKEN_HEADER: "tok", "Origin": BASE, **headers})


def _decide(client, reviewer: str, sid: str, decision: str | None) -> int:
    return _post(client, "/api/decision", {"reviewer": reviewer, "id": sid, "decision": decision}).status_code


def _rate(client, rater: str, token: str, call: str, **extra) -> int:
    return _post(client, "/api/blind/rate", {"rater": rater, "token": token, "call": call, **extra}).status_code


def _reviews(set_dir) -> dict:
    return {s.id: {r: e["decision"] for r, e in (s.provenance.reviews or {}).items()}
            for s in read_manifest(set_dir / "manifest.filtered.jsonl")}


def test_grid_shows_scores_filter_and_nearest_real(client):
    rows = {r["id"]: r for r in client.get("/api/grid", params={"reviewer": "alice"}).json()["rows"]}
    assert len(rows) == 6 and rows["syn0"]["dice"] == 0.9 and rows["syn4"]["kept"] is False
    assert [s for s, r in rows.items() if r["flagged"]] == [COPY_ID]  # the fixture's planted copy only
    assert rows[COPY_ID]["nearest_id"] == "demo_0003" and rows[COPY_ID]["nearest_distance"] == 0.0
    page = client.get("/")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    assert "http" not in page.text.replace(BASE, "")  # no external resource in the page
    assert client.get(f"/overlay/{COPY_ID}").content[:4] == b"\x89PNG"
    assert client.get("/real/demo_0003").status_code == 200 and client.get("/real/nope").status_code == 404


def test_decisions_written_per_reviewer_and_undo(client, review_set):
    set_dir, _ = review_set
    (set_dir / "manifest.filtered.jsonl").chmod(0o644)
    assert _decide(client, "alice", "syn0", "accepted") == 200
    assert (set_dir / "manifest.filtered.jsonl").stat().st_mode & 0o777 == 0o644  # the user's mode is kept
    _decide(client, "alice", "syn1", "rejected")
    _decide(client, "bob", "syn0", "rejected")
    assert _reviews(set_dir)["syn0"] == {"alice": "accepted", "bob": "rejected"}
    assert _reviews(set_dir)["syn1"] == {"alice": "rejected"}
    _decide(client, "alice", "syn1", "accepted")
    assert _post(client, "/api/undo", {"reviewer": "alice"}).json() == {"id": "syn1"}
    assert _reviews(set_dir)["syn1"] == {"alice": "rejected"}  # back to the decision before
    _post(client, "/api/undo", {"reviewer": "alice"})
    assert _reviews(set_dir)["syn1"] == {}
    rows = {r["id"]: r for r in client.get("/api/grid", params={"reviewer": "bob"}).json()["rows"]}
    assert rows["syn0"]["decision"] == "rejected" and rows["syn0"]["n_other_reviews"] == 1
    assert _decide(client, "a/../b", "syn0", "accepted") == 400
    assert _decide(client, "al", "nope", "accepted") == 404
    assert not list(set_dir.glob(".manifest.filtered.jsonl.*.jsonl"))  # no temporary file left behind


@pytest.mark.parametrize("path", ["/file/..%2F..%2Freal%2Fmanifest.jsonl", "/file/../real/manifest.jsonl",
                                  "/file/%2Fetc%2Fpasswd", "/file/images/..%2F..%2F..%2Freal%2Fimages%2Fdemo_0000.png",
                                  "/file/link/manifest.jsonl"])
def test_path_traversal_refused(client, review_set, path):
    set_dir, _ = review_set
    (set_dir / "link").symlink_to(set_dir.parent / "real")  # a link out of the set is refused too
    r = client.get(path)
    assert r.status_code in (403, 404) and b"demo_0000" not in r.content and b"root:" not in r.content
    assert client.get("/file/images/syn0.png").status_code == 200  # a file under the set is served


def test_cross_origin_and_tokenless_writes_refused(client, review_set):
    set_dir, _ = review_set
    body = {"reviewer": "mallory", "id": "syn0", "decision": "rejected"}
    assert _post(client, "/api/decision", body, Origin="http://evil.example").status_code == 403
    assert _post(client, "/api/decision", body, **{"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.post("/api/decision", json=body, headers={"Origin": BASE}).status_code == 403  # no token
    assert _post(client, "/api/decision", body, **{TOKEN_HEADER: "guess"}).status_code == 403
    assert client.get("/api/grid", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    assert _reviews(set_dir)["syn0"] == {}


def test_blinded_two_raters_accuracy_and_kappa(client, review_set):
    set_dir, _ = review_set
    items = client.get("/api/blind/items", params={"rater": "r1"}).json()["items"]
    assert len(items) == 8 and set(items[0]) == {"token", "call", "mask"}  # tokens only: no id, origin or path
    listing = json.dumps(items)
    assert "syn" not in listing and "demo" not in listing and ".png" not in listing
    session: BlindedSession = client.app.state.blinded
    truth = {it.token: it.origin for it in session.items}
    tokens = [it["token"] for it in items]
    again = BlindedSession.create(ReviewSet.open(set_dir, real=set_dir.parent / "real" / "manifest.jsonl"), 4, 3)
    assert [it.key for it in again.items] == [it.key for it in session.items]  # same seed: same images, same order
    # r1 is always right; r2 is wrong on one real and one synthetic image
    wrong = {next(t for t in tokens if truth[t] == "real"), next(t for t in tokens if truth[t] == "synthetic")}
    flip = {"real": "synthetic", "synthetic": "real"}
    for t in tokens:
        assert _rate(client, "r1", t, truth[t], mask=4) == 200
        _rate(client, "r2", t, flip[truth[t]] if t in wrong else truth[t])
    s = client.get("/api/blind/summary").json()
    assert s["raters"]["r1"]["accuracy"] == 1.0 and s["raters"]["r2"]["accuracy"] == 0.75
    lo, hi = s["raters"]["r2"]["ci95"]
    assert lo == pytest.approx(0.4093, abs=1e-3) and hi == pytest.approx(0.9285, abs=1e-3)  # Wilson, 6 of 8
    assert s["raters"]["r1"]["mask_score_synthetic"] == 4.0
    # observed agreement 6/8, chance agreement 1/2 (both raters call 4 real, 4 synthetic): kappa = 0.5
    assert s["pairs"][0]["cohen_kappa"] == pytest.approx(0.5)
    assert _rate(client, "r1", "nope", "real") == 404 and _rate(client, "r1", tokens[0], "maybe") == 400
    assert _rate(client, "r1", tokens[0], "real", mask=9) == 422
    saved = json.loads((set_dir / "review" / "blinded-seed3.json").read_text())
    assert len(saved["ratings"]["r2"]) == 8


def test_two_servers_on_one_set_keep_every_decision(review_set):
    """Two reviewers' servers (two ReviewSet objects, as two processes would have) writing at the same time:
    each write re-reads the manifest under the lock, so no decision is lost."""
    import threading

    set_dir, real = review_set
    servers = {name: ReviewSet.open(set_dir, real=real) for name in ("alice", "bob")}

    def work(name: str) -> None:
        for k in range(3):
            for i in range(6):
                servers[name].decide(name, f"syn{i}", ("accepted", "rejected")[(i + k) % 2])

    threads = [threading.Thread(target=work, args=(n,)) for n in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last = {f"syn{i}": ("accepted", "rejected")[i % 2] for i in range(6)}  # the k = 2 round
    assert _reviews(set_dir) == {s: {"alice": d, "bob": d} for s, d in last.items()}


def test_manifest_row_outside_the_set_is_refused(review_set):
    from lesionforge.data.manifest import write_manifest
    from lesionforge.errors import DataError

    set_dir, _ = review_set
    rows = read_manifest(set_dir / "manifest.filtered.jsonl", resolve=False)
    rows[0] = rows[0].model_copy(update={"image": "../real/images/demo_0000.png"})
    write_manifest(set_dir / "manifest.filtered.jsonl", rows)
    with pytest.raises(DataError, match="outside the (set|manifest)"):
        ReviewSet.open(set_dir)
