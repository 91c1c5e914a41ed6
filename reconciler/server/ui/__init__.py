"""The dashboard at ``/ui``: read-only, server-rendered, live over SSE.

It shows what the status API serves (agents, deployments, the last plan, events) as
HTML that reads without JavaScript; a few lines of plain JS (``static/dashboard.js``)
follow ``/ui/stream`` and redraw the sections that changed.  No build step, no CDN:
templates and assets are package data, served by this router.

It sits beside the status API in the server layer, fed through :class:`UiDeps` (the
same view functions the API uses), and never imports ``agent``.
"""

from reconciler.server.ui.routes import UiDeps, mount_ui

__all__ = ["UiDeps", "mount_ui"]
