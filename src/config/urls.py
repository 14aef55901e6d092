"""Root URLconf shared by every server role (web and stream)."""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from analytics.api.dashboard import dashboard
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
    path("dashboard/", dashboard, name="dashboard"),
    path(
        "dashboard/login/",
        auth_views.LoginView.as_view(template_name="analytics/login.html", redirect_authenticated_user=True),
        name="dashboard-login",
    ),
    path("dashboard/logout/", auth_views.LogoutView.as_view(next_page="dashboard-login"), name="dashboard-logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # GET only: OPTIONS rendered DRF's metadata through the HTML template renderer (a 500).
    path(
        "api/docs/", SpectacularSwaggerView.as_view(url_name="schema", http_method_names=["get", "head"]), name="docs"
    ),
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
handler400 = "kernel.errors.handler400"
handler403 = "kernel.errors.handler403"
