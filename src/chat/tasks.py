"""Celery entry points of the chat context: ids and primitives in, one service call
out, no logic. Name tasks ``"chat.<what>"`` and route them in ``config.celery``
(unrouted tasks run on the ``default`` queue); enqueue with ``delay_on_commit``."""
