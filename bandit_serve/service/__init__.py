"""Serving: the routing logic (``core``), the HTTP API (``http``), the Ray Serve wiring
(``serve_app``), run options (``options``) and ``bandit-serve run`` (``runner``)."""
