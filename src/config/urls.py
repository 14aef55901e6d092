"""Root URLconf shared by every server role (web and stream)."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from kernel import health

api_v1 = [
    path("", include("users.api.urls")),
    path("billing/", include("billing.api.urls")),
    path("", include("llm.api.urls")),
    path("analytics/", include("analytics.api.urls")),
    path("", include("chat.api.urls")),
    # startcontext: api routes above
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/", include(api_v1)),
]

if settings.BENCH_VIEWS:  # benchmark baselines (bench/), off unless BENCH_VIEWS=true
    from config import bench_views

    urlpatterns += [
        path("bench/floor/", bench_views.FloorSubmitApi.as_view(), name="bench-floor"),
        path("bench/naive/", bench_views.NaiveSubmitApi.as_view(), name="bench-naive"),
    ]

handler404 = "kernel.errors.handler404"
handler500 = "kernel.errors.handler500"
