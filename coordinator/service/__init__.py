"""The coordinator as an HTTP service: FastAPI app, SQLite store, plain and SecAgg+ rounds."""

from .admin_client import AdminClient, AdminError
from .app import create_app
from .rounds import Coordinator, ServiceConfig
from .server import ServerThread, serve
from .store import Store

__all__ = [
    "AdminClient",
    "AdminError",
    "Coordinator",
    "ServerThread",
    "ServiceConfig",
    "Store",
    "create_app",
    "serve",
]
