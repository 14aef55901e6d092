"""HTTP API v1 of the chat context, mounted at ``/api/v1/chat/``."""
