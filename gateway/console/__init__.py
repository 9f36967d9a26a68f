"""The tunegate Board: a static single-page console served under ``/console``.

It is only a client of the public HTTP API (``/v1`` with an organization key, ``/admin`` with the admin key): the
browser keeps the key it signed in with in ``sessionStorage`` and calls the API like any other client, so nothing here
reads the database or the services. Plain ES modules, no build step; the one library, uPlot (MIT, charts), is vendored
in ``static/vendor/`` so the console works offline.
"""

from __future__ import annotations

from pathlib import Path

from litestar import get
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

STATIC = Path(__file__).parent / "static"


@get("/", include_in_schema=False, sync_to_thread=False)
def to_console() -> Redirect:
    return Redirect("/console/")


def console_routes() -> list[ControllerRouterHandler]:
    """The console's files (``/console/`` → index.html) and ``/`` pointing at it."""
    files = create_static_files_router(
        path="/console", directories=[STATIC], html_mode=True, name="console", include_in_schema=False
    )
    return [files, to_console]
