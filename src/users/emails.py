"""Emails of the users context: welcome and key-created, sent from the ``priority`` pool.

``users.services`` enqueues them (Django's task API on kernel.tasks_backend) inside its
transaction; the message leaves after commit and a priority worker renders and sends
through Django's email backend (``EMAIL_URL``: console by default, SMTP in production).
Nothing here runs in a request, and no email ever carries a raw API key: only its
public prefix (the key is shown once, to whoever created it).
"""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mail
from django.tasks import task

from users.models import APIKey, User

REVOKE_HINT = "manage.py revoke_api_key {prefix}"


@task(queue_name="priority")
def send_welcome_email(user_id: int, organization_name: str) -> str:
    user = User.objects.filter(id=user_id).first()
    if user is None:
        return "skipped: user deleted"
    body = (
        f"Welcome to Switchyard.\n\n"
        f"You are the owner of the organization {organization_name!r}. Submit AI tasks with your API key:\n\n"
        f"  curl -H 'Authorization: Bearer <your key>' -d prompt=hello <host>/api/v1/ai-tasks/\n\n"
        f"The API reference is at /api/docs/.\n"
    )
    send_mail("Welcome to Switchyard", body, settings.DEFAULT_FROM_EMAIL, [user.email])
    return "sent"


@task(queue_name="priority")
def send_key_created_email(key_id: str) -> str:
    key = APIKey.objects.select_related("created_by", "organization").filter(id=key_id).first()
    if key is None or key.created_by is None:
        return "skipped: key or creator deleted"
    body = (
        f"A new API key was created for {key.organization.name!r}.\n\n"
        f"  name:    {key.name}\n"
        f"  prefix:  {key.prefix}\n"
        f"  created: {key.created_at:%Y-%m-%d %H:%M} UTC\n\n"
        f"If you did not create it, revoke it now: {REVOKE_HINT.format(prefix=key.prefix)}\n"
    )
    send_mail(f"New API key {key.prefix}", body, settings.DEFAULT_FROM_EMAIL, [key.created_by.email])
    return "sent"
