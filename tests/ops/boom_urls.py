"""A URLconf with a view that fails unexpectedly, for the Sentry test."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from config.urls import urlpatterns as app_urlpatterns


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom for sentry")


urlpatterns = [path("boom/", boom), *app_urlpatterns]
