import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infrasim_site.settings")

app = Celery("infrasim")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
