"""The live dashboard: routes, what it shows, the SSE hub, login, alerts, the funnel and metrics.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.dashboard import metrics, routes
from rtserver.dashboard.alerts import Alerts
from rtserver.dashboard.auth import Auth, RequireLogin, resolve_auth
from rtserver.dashboard.board import Board
from rtserver.dashboard.flows import Flow, FlowStep
from rtserver.dashboard.hub import Hub
from rtserver.dashboard.latency import Histogram
from rtserver.dashboard.metrics import Metrics
from rtserver.dashboard.readings import Readings
from rtserver.dashboard.routes import Dashboard

__all__ = [
    "Alerts",
    "Auth",
    "Board",
    "Dashboard",
    "Flow",
    "FlowStep",
    "Histogram",
    "Hub",
    "Metrics",
    "Readings",
    "RequireLogin",
    "metrics",
    "resolve_auth",
    "routes",
]
