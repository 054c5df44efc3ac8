"""`appraiser serve`: Appraiser's models behind the OpenAI protocol (FastAPI + uvicorn)."""

from appraiser.server.app import DEFAULT_PORT, ServerSettings, create_app

__all__ = ["DEFAULT_PORT", "ServerSettings", "create_app"]
