from django.apps import AppConfig


class ForensicsConfig(AppConfig):
    name = "forensics"
