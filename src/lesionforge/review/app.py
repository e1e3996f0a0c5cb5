"""The review web application (FastAPI): the review grid, the blinded test, and their small JSON API.

Security: only files under the set folder are served (``/file/...`` resolves the path and refuses anything
outside it), plus the real images listed in the real manifest the user named, served by sample id; blinded
images only by an opaque per-session token. Writes (POST) need the session token embedded in the pages and
are refused when the request comes from another origin; the Host header must be the bound host (no DNS
rebinding); no page loads anything from the network (Content-Security-Policy ``'self'``; FastAPI's own docs
pages, which load from a CDN, are switched off).
"""

from __future__ import annotations

import re
import secrets
from importlib.resources import files

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from lesionforge.review.blinded import BlindedSession
from lesionforge.review.render import sample_png
from lesionforge.review.store import ReviewSet, inside

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")  # reviewer / rater names: they become JSON keys and file content
TOKEN_HEADER = "X-Review-Token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = files("lesionforge.review") / "static"


class Decision(BaseModel):
    reviewer: str
    id: str
    decision: str | None  # accepted / rejected / None (clear)


class Undo(BaseModel):
    reviewer: str


class Rating(BaseModel):
    rater: str
    token: str
    call: str
    mask: int | None = Field(default=None, ge=1, le=5)


def _name(value: str) -> str:
    if not NAME.match(value):
        raise HTTPException(400, "names are 1-40 letters, digits, '.', '_' or '-'")
    return value


def create_app(rs: ReviewSet, blinded: BlindedSession | None = None, host: str = "127.0.0.1",
               default_reviewer: str = "reviewer", token: str | None = None, blind_size: int = 256) -> FastAPI:
    """The application for one set. ``token`` (random when not given) must accompany every write."""
    token = token or secrets.token_urlsafe(24)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token = token
    app.state.blinded = blinded
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted({host, "127.0.0.1", "localhost"}))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            same = f"http://{request.headers.get('host', '')}"
            if origin is not None and origin != same:
                return JSONResponse({"detail": "cross-origin write refused"}, status_code=403)
            if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
                return JSONResponse({"detail": "cross-site write refused"}, status_code=403)
            if not secrets.compare_digest(request.headers.get(TOKEN_HEADER, ""), token):
                return JSONResponse({"detail": "missing or wrong session token"}, status_code=403)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    def page(name: str) -> HTMLResponse:
        html = (STATIC / name).read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{TOKEN}}", token).replace("{{REVIEWER}}", default_reviewer))

    def png(data: bytes) -> Response:
        return Response(data, media_type="image/png")

    @app.get("/")
    def review_page() -> HTMLResponse:
        return page("review.html")

    @app.get("/api/grid")
    def grid(reviewer: str = default_reviewer) -> dict:
        return {"set": rs.root.name, "manifest": rs.manifest.name, "audit": bool(rs.audit),
                "rows": rs.rows(_name(reviewer))}

    @app.post("/api/decision")
    def decide(d: Decision) -> dict:
        if d.decision not in ("accepted", "rejected", None):
            raise HTTPException(400, "decision must be accepted, rejected or null")
        try:
            entry = rs.decide(_name(d.reviewer), d.id, d.decision)
        except KeyError:
            raise HTTPException(404, f"no synthetic sample {d.id!r}") from None
        return {"id": d.id, "entry": entry}

    @app.post("/api/undo")
    def undo(u: Undo) -> dict:
        return {"id": rs.undo(_name(u.reviewer))}

    @app.get("/overlay/{sid:path}")
    def overlay(sid: str) -> Response:
        s = rs.sample(sid)
        if s is None:
            raise HTTPException(404)
        return png(sample_png(s))

    @app.get("/real/{sid:path}")
    def real(sid: str) -> Response:
        s = rs.real_sample(sid)  # only images listed in the real manifest the user named
        if s is None:
            raise HTTPException(404)
        return png(sample_png(s))

    @app.get("/file/{path:path}")
    def raw_file(path: str) -> FileResponse:
        full = inside(rs.root, path)
        if full is None or not full.is_file():
            raise HTTPException(404)
        return FileResponse(full)

    @app.get("/blinded")
    def blinded_page() -> HTMLResponse:
        _need(blinded)
        return page("blinded.html")

    @app.get("/blinded/results")
    def results_page() -> HTMLResponse:
        _need(blinded)
        return page("results.html")

    @app.get("/api/blind/items")
    def blind_items(rater: str) -> dict:
        return {"items": _need(blinded).listing(_name(rater))}

    @app.post("/api/blind/rate")
    def blind_rate(r: Rating) -> dict:
        session = _need(blinded)
        try:
            session.rate(_name(r.rater), r.token, r.call, r.mask)
        except KeyError:
            raise HTTPException(404, "no such item") from None
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return {"ok": True}

    @app.get("/blind/image/{item_token}")
    def blind_image(item_token: str, outline: int = 1) -> Response:
        it = _need(blinded).item(item_token)
        if it is None:
            raise HTTPException(404)
        return png(sample_png(it.sample, outline=bool(outline), size=blind_size))

    @app.get("/api/blind/summary")
    def blind_summary() -> dict:
        return _need(blinded).summary()

    return app


def _need(blinded: BlindedSession | None) -> BlindedSession:
    if blinded is None:
        raise HTTPException(404, "no blinded test: start the server with real images (--real)")
    return blinded
