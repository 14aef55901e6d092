"""Reads and validates the environment before Django starts.

Everything here is plain Python so that a broken environment produces one clear line
on stderr (and exit status 2) instead of a traceback from deep inside Django.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import pairwise


class ConfigurationError(Exception):
    """A setting is missing or contradicts another one."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The nested time limits of SPEC §5, in seconds."""

    provider_http: float
    soft_limit: int
    hard_limit: int
    visibility: int
    lease: int
    heartbeat: float = 10.0


def validate_timeouts(t: Timeouts) -> list[str]:
    """One message per broken rule: the chain http < soft < hard < visibility (a message
    is redelivered only after a call could have ended), and a lease that outlasts two
    missed heartbeats (renewals), so a busy worker never loses a live call's lease."""
    chain = [
        ("LLM_HTTP_TIMEOUT", t.provider_http),
        ("TASK_SOFT_TIME_LIMIT", t.soft_limit),
        ("TASK_TIME_LIMIT", t.hard_limit),
        ("CELERY_VISIBILITY_TIMEOUT", t.visibility),
    ]
    errors = [
        f"{name} must be positive (got {value})"
        for name, value in [*chain, ("TASK_LEASE_SECONDS", t.lease), ("TASK_HEARTBEAT_S", t.heartbeat)]
        if value <= 0
    ]
    for (low_name, low), (high_name, high) in pairwise(chain):
        if not low < high:
            errors.append(f"{low_name} ({low}) must be less than {high_name} ({high})")
    if t.heartbeat > 0 and not t.lease > 2 * t.heartbeat:
        errors.append(f"TASK_LEASE_SECONDS ({t.lease}) must be more than twice TASK_HEARTBEAT_S ({t.heartbeat})")
    return errors


def validate_production(*, debug: bool, secret_key: str, allowed_hosts: list[str]) -> list[str]:
    """Settings that only a development machine may leave out."""
    if debug:
        return []
    errors = []
    if not secret_key:
        errors.append("SECRET_KEY is required when DEBUG is off")
    elif len(secret_key) < 32:
        errors.append("SECRET_KEY must be at least 32 characters when DEBUG is off")
    if not allowed_hosts:
        errors.append("ALLOWED_HOSTS is required when DEBUG is off")
    return errors


MIN_SECRET_LENGTH = 32


def validate_secrets(*, debug: bool, secret_key: str, webhook_secrets: list[str], metrics_token: str) -> list[str]:
    """The webhook signing secrets and the metrics token: only DEBUG may leave them out.
    A signing secret must not be SECRET_KEY (which signs sessions and may be a demo value)."""
    if debug:
        return []
    errors = []
    if not webhook_secrets:
        errors.append("WEBHOOK_SIGNING_SECRETS is required when DEBUG is off")
    elif any(len(secret) < MIN_SECRET_LENGTH for secret in webhook_secrets):
        errors.append(f"each WEBHOOK_SIGNING_SECRETS entry must be at least {MIN_SECRET_LENGTH} characters")
    elif secret_key in webhook_secrets:
        errors.append("WEBHOOK_SIGNING_SECRETS must differ from SECRET_KEY")
    if not metrics_token:
        errors.append("METRICS_TOKEN is required when DEBUG is off")
    elif len(metrics_token) < MIN_SECRET_LENGTH:
        errors.append(f"METRICS_TOKEN must be at least {MIN_SECRET_LENGTH} characters when DEBUG is off")
    return errors


def fail_fast(errors: list[str]) -> None:
    """Stop the process with a single line naming every problem."""
    if errors:
        sys.stderr.write("switchyard: configuration error: " + "; ".join(errors) + "\n")
        sys.stderr.flush()
        raise SystemExit(2)
