from django.urls import path

from analytics.api.views import ExportCreateApi, ExportDetailApi, ExportDownloadApi, SummaryApi

urlpatterns = [
    path("summary/", SummaryApi.as_view(), name="analytics-summary"),
    path("exports/", ExportCreateApi.as_view(), name="analytics-exports"),
    path("exports/<uuid:export_id>/", ExportDetailApi.as_view(), name="analytics-export-detail"),
    path("exports/<uuid:export_id>/download/", ExportDownloadApi.as_view(), name="analytics-export-download"),
]
