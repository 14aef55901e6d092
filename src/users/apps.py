from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "users"
    verbose_name = "Users and organizations"
    default_auto_field = "django.db.models.BigAutoField"
