from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "llm"
    verbose_name = "LLM tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from kernel.metrics import register_scrape_source
        from llm.services import queue_gauges

        register_scrape_source("llm", queue_gauges)  # queue depth and age at every /metrics scrape
