"""The router: one stable URL per Axon deployer in front of its model servers.

Users and scripts keep one URL (`http://HOST:PORT/<axon>/predict`) while versions come and go
behind it. The decisions (who answers, DAG order, what a node receives) are the pure functions
of `executors/serving/routing.py`; this package only moves bytes:

- `sources.py`: where the table comes from (memory, a JSON file; KV is `kv_table.py`);
- `following.py`: the compiled table, swapped in atomically and followed through outages;
- `calls.py`: the calls to model servers (one pooled client, per-backend waits, shadows);
- `routes.py`: the `Router`, answering routes and health; `feedback.py`, feedback sent back
  to the versions that answered; `v2.py`, the Open Inference Protocol v2 endpoints;
- `app.py`: the ASGI app (limits, fast path, documented routes) and `serve_router`;
  `__main__.py`: `python -m executors.serving.router TABLE.json`.

Seldon's v1 paths are aliases of `/predict` and `/send-feedback`.
"""

from executors.serving.router.app import create_router_app, serve_router
from executors.serving.router.routes import Router
from executors.serving.router.sources import (
    FileTableSource,
    InMemoryTableSource,
    TableFileError,
    TableSource,
    read_table_file,
)

__all__ = [
    "FileTableSource",
    "InMemoryTableSource",
    "Router",
    "TableFileError",
    "TableSource",
    "create_router_app",
    "read_table_file",
    "serve_router",
]
