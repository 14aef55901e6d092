"""Shared kernel: logging, request ids, health, metrics, query budgets, db routing,
idempotency, the transactional outbox and cache helpers. Imports no context."""
