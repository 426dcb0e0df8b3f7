"""The HTTP service: FastAPI app with prediction, health, metrics, JWT auth and rate limiting.

``create_app(settings=None, classifier=None)`` builds it; ``amulet-lab serve`` runs it with uvicorn.
"""

from amulet_lab.service.app import ServiceState, create_app
from amulet_lab.service.auth import issue_token, verify_token

__all__ = ["create_app", "ServiceState", "issue_token", "verify_token"]
