"""The files ``manage.py startcontext`` writes for a new bounded context.

Each template is ``string.Template`` text (``${name}``, ``${camel}``, ``${title}``), so
Python braces need no escaping. What is generated must pass ruff, mypy and lint-imports
as it stands (tests/test_startcontext.py checks all three), and shows the house style:
services typed with contracts models, one APIView per operation, thin tasks.
"""

from __future__ import annotations

from string import Template

CONTEXT_FILES: dict[str, str] = {
    "__init__.py": '''\
"""The ${name} context. Its one public entry point is ``${name}.services`` (typed with
``contracts.${name}``): other contexts import nothing else from this package."""
''',
    "apps.py": '''\
"""Django application of the ${name} context."""

from django.apps import AppConfig


class ${camel}Config(AppConfig):
    name = "${name}"
    verbose_name = "${title}"
    default_auto_field = "django.db.models.BigAutoField"
''',
    "models.py": '''\
"""Tables of the ${name} context: fields and constraints, no business rules beyond invariants.

Only ${name} may import this module (importlinter.ini). Refer to users through
``settings.AUTH_USER_MODEL`` and to other contexts by id or string reference
(``"users.Organization"``), never by importing their models.
"""
''',
    "selectors.py": '''\
"""Reads of the ${name} context. Querysets are built here and never leave the context:
public reads go through ``${name}.services`` and return contracts models."""
''',
    "services.py": '''\
"""Public surface of the ${name} context: use-cases that take and return
``contracts.${name}`` models. Other contexts call these functions and nothing else;
no ORM object or queryset leaves this module. Writes run under ``transaction.atomic``;
cross-context side effects are domain events written to the outbox
(``kernel.services.event_publish``)."""

from __future__ import annotations

from contracts.${name} import ${camel}Echo, ${camel}EchoInput
from kernel.errors import DomainError


class ${camel}Error(DomainError):
    """Base of this context's domain errors; kernel.errors maps each to its status and code."""

    code = "${name}_error"
    default_detail = "The ${name} request could not be completed."


def ${name}_echo(*, data: ${camel}EchoInput) -> ${camel}Echo:
    """Example use-case (replace it): the message, trimmed, for the caller's organization."""
    message = data.message.strip()
    if not message:
        raise ${camel}Error("The message must not be blank.")
    return ${camel}Echo(organization_id=data.organization_id, message=message, length=len(message))
''',
    "tasks.py": '''\
"""Background work of the ${name} context with Django's task API (``django.tasks``), run
on the platform's Celery pools by ``kernel.tasks_backend`` (docs/adding-a-context.md).

Primitives in (JSON), one service call, a JSON result out; no logic here. Enqueue from a
service (``${name}_echo_task.enqueue(...)``): the message is sent after the transaction
commits, and the result is read back from PostgreSQL with
``${name}_echo_task.get_result(result.id)``. ``queue_name`` (or ``priority``) picks the
pool; ``kernel.tasks_backend.platform_task`` sets ``max_attempts`` and ``time_limit``.
Attempts are retried with back-off, so a task must be safe to run twice."""

from __future__ import annotations

from uuid import UUID

from django.tasks import task

from contracts.${name} import ${camel}EchoInput
from ${name} import services


@task(queue_name="default")
def ${name}_echo_task(organization_id: str, message: str) -> dict[str, object]:
    """Example task (replace it): ``${name}_echo`` on a worker of the default pool."""
    data = ${camel}EchoInput(organization_id=UUID(organization_id), message=message)
    return services.${name}_echo(data=data).model_dump(mode="json")
''',
    "admin.py": '''\
"""Django admin of the ${name} context: register its models here."""
''',
    "api/__init__.py": '''\
"""HTTP API v1 of the ${name} context, mounted at ``/api/v1/${name}/``."""
''',
    "api/urls.py": '''\
"""Routes of the ${name} API (included by config.urls under ``/api/v1/${name}/``)."""

from django.urls import path

from ${name}.api.views import ${camel}EchoApi

urlpatterns = [path("echo/", ${camel}EchoApi.as_view(), name="${name}-echo")]
''',
    "api/serializers.py": '''\
"""Serializers of the ${name} API: input validation and the output shape, nothing more."""

from __future__ import annotations

from rest_framework import serializers


# Named after the context: drf-spectacular names schema components after the class.
class ${camel}EchoInputSerializer(serializers.Serializer[dict[str, object]]):
    message = serializers.CharField(max_length=1000, trim_whitespace=False)


class ${camel}EchoOutputSerializer(serializers.Serializer[dict[str, object]]):
    organization_id = serializers.UUIDField()
    message = serializers.CharField()
    length = serializers.IntegerField()
''',
    "api/views.py": '''\
"""Views of the ${name} API: validate, make one service call, serialize. Errors are
exceptions from the services, mapped once by ``kernel.errors``."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from contracts.${name} import ${camel}EchoInput
from kernel.auth import principal_of
from ${name} import services
from ${name}.api import serializers


class ${camel}EchoApi(APIView):
    """Example endpoint (replace it): echoes a message for the caller's organization."""

    InputSerializer = serializers.${camel}EchoInputSerializer
    OutputSerializer = serializers.${camel}EchoOutputSerializer
    query_budget = 3

    @extend_schema(
        request=InputSerializer,
        responses=OutputSerializer,
        operation_id="${name}_echo_create",
    )
    def post(self, request: Request) -> Response:
        principal = principal_of(request)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = ${camel}EchoInput(
            organization_id=principal.organization_id,
            message=serializer.validated_data["message"],
        )
        result = services.${name}_echo(data=data)
        return Response(self.OutputSerializer(result.model_dump()).data)
''',
    "migrations/__init__.py": "",
    "tests/__init__.py": "",
    "tests/test_services.py": '''\
"""Services of the ${name} context, called the way other contexts call them."""

from __future__ import annotations

import uuid

import pytest

from contracts.${name} import ${camel}EchoInput
from ${name} import services
from ${name}.tasks import ${name}_echo_task


def test_echo_trims_the_message() -> None:
    data = ${camel}EchoInput(organization_id=uuid.uuid4(), message="  hello  ")
    result = services.${name}_echo(data=data)
    assert (result.organization_id, result.message, result.length) == (data.organization_id, "hello", 5)


def test_echo_refuses_a_blank_message() -> None:
    data = ${camel}EchoInput(organization_id=uuid.uuid4(), message="   ")
    with pytest.raises(services.${camel}Error, match="blank"):
        services.${name}_echo(data=data)


def test_the_echo_task_returns_json() -> None:
    organization_id = uuid.uuid4()
    result = ${name}_echo_task.call(str(organization_id), " hi ")  # the function, in this process
    assert result == {"organization_id": str(organization_id), "message": "hi", "length": 2}
''',
}

CONTRACTS_FILE = '''\
"""Published language of the ${name} context: the types its services take and return
and the domain events it emits. Pure Pydantic: imports nothing from src/ and no Django."""

from __future__ import annotations

from uuid import UUID

from pydantic import Field

from contracts.base import Contract


class ${camel}EchoInput(Contract):
    organization_id: UUID
    message: str = Field(max_length=1000)


class ${camel}Echo(Contract):
    organization_id: UUID
    message: str
    length: int
'''

PROTECTED_MODELS_CONTRACT = """\
[importlinter:contract:${name}-models]
name = Only ${name} may import ${name}.models
type = protected
protected_modules =
    ${name}.models
allowed_importers =
    ${name}
"""


def render(template: str, *, name: str) -> str:
    camel = "".join(part.capitalize() for part in name.split("_"))
    title = name.replace("_", " ").capitalize()
    return Template(template).substitute(name=name, camel=camel, title=title)
