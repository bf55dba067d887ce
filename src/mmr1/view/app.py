"""The `mmr1 view` server: FastAPI over `view.data`, GET routes only, files served from inside the runs only.

The front end (static/index.html, app.js, app.css) is plain HTML/JS/CSS with no build step and nothing fetched
from elsewhere; it asks the JSON routes below for everything and draws the curves itself (inline SVG).
"""

from __future__ import annotations

import socket
from importlib import resources

from ..errors import MMR1Error
from .data import IMAGE_TYPES, NotARun, Run, open_runs

STATIC = ("app.js", "app.css")


def static_text(name: str) -> str:
    return resources.files("mmr1.view").joinpath("static", name).read_text()


def make_app(runs: list[Run]):
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse

    app = FastAPI(title="mmr1 view", docs_url=None, redoc_url=None, openapi_url=None)

    def run_of(i: int) -> Run:
        if not 0 <= i < len(runs):
            raise HTTPException(404, f"no run {i}")
        return runs[i]

    def guarded(fn, *args):
        try:
            return fn(*args)
        except NotARun as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/", response_class=HTMLResponse)
    def index():
        return static_text("index.html").replace("{{DATA}}", "null")

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            raise HTTPException(404, "not found")
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return PlainTextResponse(static_text(name), media_type=media)

    @app.get("/api/runs")
    def list_runs():
        return [r.describe() for r in runs]

    @app.get("/api/run/{i}/metrics")
    def metrics(i: int, part: str = ""):
        return guarded(run_of(i).metrics, part)

    @app.get("/api/run/{i}/steps")
    def steps(i: int, part: str = ""):
        return {"steps": guarded(run_of(i).steps, part)}

    @app.get("/api/run/{i}/rollouts")
    def rollouts(i: int, step: int, part: str = ""):
        return guarded(run_of(i).rollouts, part, step)

    @app.get("/api/run/{i}/table")
    def table(i: int, path: str):
        return guarded(run_of(i).table, path)

    @app.get("/api/run/{i}/eval")
    def eval_set(i: int, name: str = ""):
        return guarded(run_of(i).eval_set, name)

    @app.get("/api/run/{i}/file/{rel:path}")
    def file(i: int, rel: str):
        p = run_of(i).file(rel)
        if p is None:
            raise HTTPException(404, "not an image inside the run")
        return FileResponse(p, media_type=IMAGE_TYPES[p.suffix.lower()])

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one line naming the port when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise MMR1Error(f"port {port} on {host} is in use; pick another with --port N (0 picks a free one)") \
                from None
        raise MMR1Error(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(64)
    return sock


def serve(paths: list[str], host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the runs until Ctrl-C; prints the address first."""
    import uvicorn

    runs = open_runs(paths)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"mmr1 view: {len(runs)} run(s) at http://{shown}:{bound}/ (read-only; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(make_app(runs), log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
