import os

from django.apps import AppConfig


class KernelConfig(AppConfig):
    name = "kernel"
    verbose_name = "Kernel"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Traces start here, not in settings like Sentry: the Django instrumentation edits
        # MIDDLEWARE, which needs settings loaded, and the handler reads it only after setup.
        from django.conf import settings

        from kernel import tracing

        tracing.init(
            endpoint=settings.OTEL_EXPORTER_OTLP_ENDPOINT,
            service_name=settings.OTEL_SERVICE_NAME,
            role=os.environ.get("SWITCHYARD_ROLE") or "app",
            sample_rate=settings.OTEL_TRACES_SAMPLE_RATE,
        )
