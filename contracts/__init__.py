"""The published language between contexts: frozen Pydantic models for service inputs
and outputs and for domain events. Imports nothing from src/ and no Django."""
