from django.apps import AppConfig


class InfrasimSiteConfig(AppConfig):
    name = "infrasim_site"
    verbose_name = "InfraSim"
