"""The live dashboard: routes, what it shows, the SSE hub, login, alerts, the funnel and metrics."""
