"""The HTTP app: OpenAI-compatible chat completions, a predict route, models, health, metrics, playground.

    schemabuild serve tool_picker [--run DIR] [--host 127.0.0.1] [--port 8000] [--api-key KEY]

setup (load each task's model, check its contract, share one base among PEFT adapters) → run (FastAPI
on uvicorn; requests go through the batching Engine, their grammars through a GrammarPool) → nothing to save.

Where things are: config.py (settings), bodies.py (request bodies), errors.py, middleware.py (auth, body
limit, metrics), routes.py (one function per route), serving.py (the work behind them), schemas.py (client
schemas: the strict walk and the output check), compiler.py (grammar compiles in a bounded child process),
engine.py (the request batcher), served.py (loading what is served), metrics.py. This file only wires them.
"""

import asyncio
import contextlib
import threading
import time
from typing import Any, Iterator

from schemabuild.config import ConfigError
from schemabuild.serve.config import ServeConfig
from schemabuild.serve.served import Served, as_served, load_models
from schemabuild.serve.errors import install_handlers
from schemabuild.serve.metrics import Metrics
from schemabuild.serve.middleware import Guard
from schemabuild.serve.compiler import GrammarPool
from schemabuild.serve.engine import Engine
from schemabuild.serve.requestlog import RequestLog
from schemabuild import __version__

__all__ = ["ServeConfig", "Served", "create_app", "load_models", "serve_in_thread", "run_server"]


def create_app(models: list, cfg: ServeConfig | None = None):
    """The FastAPI app serving `models` (Served records from `load_models`, or schemabuild Predictors).

    Engines (and their grammar pools) start when the app starts (lifespan) and stop when it stops.
    """
    from fastapi import FastAPI

    from schemabuild.serve.routes import router

    cfg = cfg or ServeConfig()
    served = {s.task.name: s for s in (as_served(m) for m in models)}
    if not served:
        raise ConfigError("TASKS: nothing to serve")
    engines = _engines(served, cfg)
    request_log = None
    if cfg.log_requests:
        request_log = RequestLog(cfg.log_requests, cfg.log_max_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for engine in engines.values():
            started = engine.start()
            if asyncio.iscoroutine(started):
                await started
        try:
            yield
        finally:
            for engine in engines.values():
                stopped = engine.stop()
                if asyncio.iscoroutine(stopped):
                    await stopped
            if request_log is not None:
                request_log.close()

    app = FastAPI(title="schemabuild", version=_version(), lifespan=lifespan)
    metrics = Metrics()
    app.state.served, app.state.metrics, app.state.cfg = served, metrics, cfg
    app.state.engines, app.state.created = engines, int(time.time())
    app.state.request_log = request_log
    install_handlers(app)
    app.router.routes.extend(router.routes)  # flat (include_router wraps them, hiding each route's path)
    app.router.redirect_slashes = False
    app.add_middleware(Guard, cfg=cfg, metrics=metrics, routes=app.router.routes)
    return app


def _engines(served: dict[str, Served], cfg: ServeConfig) -> dict[str, Any]:
    """One Engine (with one GrammarPool on its decoder's grammar backend) per decoder, labelled by the tasks it
    serves ("a+b")."""
    by_decoder: dict[int, Any] = {}
    names: dict[int, list[str]] = {}
    for s in served.values():
        key = id(s.decoder)
        if key not in by_decoder:
            pool = GrammarPool(s.decoder.grammars, timeout_s=cfg.compile_timeout_s, memory_mb=cfg.compile_memory_mb)
            by_decoder[key] = Engine(s.decoder, max_batch=cfg.max_batch, window_ms=cfg.batch_window_ms,
                                     max_queue=cfg.max_queue, grammars=pool,
                                     max_tokens_in_flight=cfg.max_tokens_in_flight)
        s.engine = by_decoder[key]
        names.setdefault(key, []).append(s.task.name)
    return {"+".join(names[key]): engine for key, engine in by_decoder.items()}


def _version() -> str:

    return __version__


# ---- running it ------------------------------------------------------------------------------------

@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread on host:port (0 = a free port); yields the base URL."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def run_server(tasks, cfg: ServeConfig, runs_dir=None):
    """`schemabuild serve`: load every task's model, then serve until interrupted."""
    import uvicorn

    served = load_models(list(tasks), cfg, runs_dir)
    app = create_app(served, cfg)
    where = f"http://{cfg.host}:{cfg.port}"
    names = ", ".join(s.task.name for s in served)
    auth = "Bearer key required" if cfg.api_key else "no API key (set --api-key or SCHEMABUILD_API_KEY to require one)"
    print(f"serving {names} at {where}  (OpenAI base_url {where}/v1, playground {where}/, {auth})", flush=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {cfg.host} exposes the API beyond this machine", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
