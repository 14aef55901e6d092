from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"
    verbose_name = "Analytics"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from contracts.events import AITaskFinished
        from kernel import services as kernel

        kernel.event_subscribe(AITaskFinished.event_type, "analytics.handlers.on_ai_task_finished")
