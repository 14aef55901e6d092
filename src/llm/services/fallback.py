"""Which model an attempt calls, and what the provider receives (the worker side).

A task's chain is ``[model, *fallback_models]``. ``served_model`` on the task is the
model of the current attempt (once done: the model that answered). After a retryable
failure the next attempt goes to the next model of the chain (``record_failure`` moves
``served_model`` on, wrapping to the first). Before each attempt ``model_for_attempt``
skips models whose circuit breaker (``llm.breaker``) is open, so while a model is down
its work goes straight to a fallback; when every model of the chain is open the attempt
tries the one it was due to use anyway (failing the task is worse than trying).

A task without fallbacks always calls its model, as before.
"""

from __future__ import annotations

from llm import breaker
from llm.models import AITask
from llm.providers import CompletionRequest, ProviderError, RateLimited
from llm.providers.base import Message


def chain(task: AITask) -> list[str]:
    models = [task.model]
    for name in task.fallback_models or []:
        if isinstance(name, str) and name not in models:
            models.append(name)
    return models


def model_for_attempt(task: AITask) -> str:
    """The model this attempt calls (recorded on the task as ``served_model``)."""
    models = chain(task)
    due = task.served_model if task.served_model in models else models[0]
    if len(models) > 1:
        start = models.index(due)
        rotation = models[start:] + models[:start]
        due = next((name for name in rotation if breaker.allow(name)), due)
    if due != task.served_model:
        AITask.objects.filter(id=task.id).update(served_model=due)
        task.served_model = due
    return due


def record_failure(task: AITask, model: str, error: ProviderError) -> None:
    """A retryable failure of ``model``: count it against the model's breaker (outages
    only, not rate limits) and point the task's next attempt at the next model."""
    if not isinstance(error, RateLimited):
        breaker.record_failure(model)
    models = chain(task)
    if len(models) > 1 and model in models:
        following = models[(models.index(model) + 1) % len(models)]
        AITask.objects.filter(id=task.id).update(served_model=following)
        task.served_model = following


def record_success(model: str) -> None:
    breaker.record_success(model)


def request_for(task: AITask, model: str) -> CompletionRequest:
    """The provider's request: the task's message list (system prompt apart, as every
    provider takes it) when it has one, else its prompt as the one user message."""
    if not task.messages:
        return CompletionRequest.from_prompt(
            task.prompt, model=model, max_tokens=task.max_tokens, attempt=task.attempts
        )
    system = "\n\n".join(m["content"] for m in task.messages if m["role"] == "system") or None
    turns = tuple(
        Message(role="assistant" if m["role"] == "assistant" else "user", content=m["content"])
        for m in task.messages
        if m["role"] != "system"
    )
    return CompletionRequest(
        model=model, messages=turns, max_tokens=task.max_tokens, system=system, attempt=task.attempts
    )


def answered_by(task: AITask) -> str | None:
    """The model to charge at when it differs from the one the budget was reserved for."""
    return task.served_model if task.served_model and task.served_model != task.model else None


__all__ = ["answered_by", "chain", "model_for_attempt", "record_failure", "record_success", "request_for"]
