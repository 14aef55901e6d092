"""Assistants, conversations and their turns. Invariants only; the rules live in services.

A turn is an AI task of the llm context (``task_id``, by id only: no import, no FK
across contexts). The conversation's ``active_turn_id`` is the one turn that may run:
a new turn takes it with one conditional UPDATE (``services/turns.py``), so two turns
never run at once in one conversation, whatever the number of web processes.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class Assistant(models.Model):
    class Priority(models.TextChoices):
        HIGH = "high"
        NORMAL = "normal"
        LOW = "low"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Composite indexes below lead with the foreign keys: no separate single-column index.
    organization = models.ForeignKey("users.Organization", on_delete=models.CASCADE, related_name="+", db_index=False)
    name = models.CharField(max_length=200)
    system_prompt = models.TextField(blank=True, default="")
    model = models.CharField(max_length=100)
    fallback_models = models.JSONField(default=list, blank=True)
    # "high" runs on the priority queue: a chatbot's turn is answered while the user waits.
    default_priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.HIGH)
    context_token_budget = models.PositiveIntegerField(default=8000)
    max_tokens = models.PositiveIntegerField(default=1024)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "-created_at", "-id"], name="assistant_org_created")]
        constraints = [
            models.CheckConstraint(condition=Q(context_token_budget__gte=1), name="assistant_budget_positive"),
            models.CheckConstraint(condition=Q(max_tokens__gte=1, max_tokens__lte=8192), name="assistant_max_tokens"),
        ]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    """The settings of its turns are copied from the assistant when it starts (a later
    edit of the assistant applies to new conversations), so a conversation's context and
    cache keys never change under it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("users.Organization", on_delete=models.CASCADE, related_name="+", db_index=False)
    assistant = models.ForeignKey(
        Assistant, on_delete=models.SET_NULL, null=True, blank=True, related_name="conversations", db_index=False
    )
    title = models.CharField(max_length=200, blank=True, default="")
    system_prompt = models.TextField(blank=True, default="")
    model = models.CharField(max_length=100)
    fallback_models = models.JSONField(default=list, blank=True)
    priority = models.CharField(max_length=8, choices=Assistant.Priority.choices, default=Assistant.Priority.HIGH)
    context_token_budget = models.PositiveIntegerField(default=8000)
    max_tokens = models.PositiveIntegerField(default=1024)
    metadata = models.JSONField(default=dict, blank=True)
    # The turn that runs (NULL: none). Taken by a conditional UPDATE, freed when a later
    # turn finds that turn's task finished (services/turns.py).
    active_turn_id = models.UUIDField(null=True, blank=True)
    turn_count = models.PositiveIntegerField(default=0)
    # Turns whose answers are folded into the context: the context cache's version.
    answered_turns = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # The hot query: an assistant's recent conversations, newest first.
            models.Index(fields=["assistant", "-created_at", "-id"], name="conversation_assistant_recent"),
            models.Index(fields=["organization", "-created_at", "-id"], name="conversation_org_recent"),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Turn(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns", db_index=False)
    task_id = models.UUIDField(unique=True)
    content = models.TextField()
    reply = models.TextField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # A conversation's turns in order (id breaks ties of created_at).
        indexes = [models.Index(fields=["conversation", "created_at", "id"], name="turn_conversation_created")]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["running", "done", "failed", "cancelled"]), name="turn_status_valid"
            ),
            # At most one running turn per conversation, whatever the code above does.
            models.UniqueConstraint(
                fields=["conversation"], condition=Q(status="running"), name="turn_one_running_per_conversation"
            ),
        ]

    def __str__(self) -> str:
        return f"turn {self.id} ({self.status})"
