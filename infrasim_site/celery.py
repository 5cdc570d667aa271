import os
import warnings

from celery import Celery
from celery.exceptions import SecurityWarning

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infrasim_site.settings")

# The gateway host's worker runs as root on purpose (it applies `wg syncconf`),
# and it accepts JSON only, so Celery's pickle-as-root risk does not apply;
# its ten-line notice on every start would only bury real warnings.
warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges", category=SecurityWarning)

app = Celery("infrasim")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
