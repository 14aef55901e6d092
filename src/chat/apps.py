"""Django application of the chat context."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from contracts.events import AITaskFinished
        from kernel import services as kernel

        kernel.event_subscribe(AITaskFinished.event_type, "chat.handlers.on_ai_task_finished")
