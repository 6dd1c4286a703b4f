"""The coordinator as an HTTP service: FastAPI app, SQLite store, auth, downlink, metrics."""

from .app import create_app
from .rounds import Coordinator, ServiceConfig
from .server import ServerThread, serve
from .store import Store

__all__ = ["Coordinator", "ServerThread", "ServiceConfig", "Store", "create_app", "serve"]
