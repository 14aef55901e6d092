"""Who is calling, for any context's API views. The users context authenticates the
request (``users.api.authentication``) and leaves a ``Principal`` in ``request.auth``."""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.request import Request

from contracts.users import Principal


def principal_of(request: Request) -> Principal:
    auth = request.auth
    if not isinstance(auth, Principal):
        raise exceptions.NotAuthenticated()
    return auth
