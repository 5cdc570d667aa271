"""InfraSim settings: one file, read from the environment with strict parsers.

Defaults give a working single-machine set-up on http://localhost:8080 (SQLite
under var/, Redis from REDIS_URL, which `make run` points at a private
redis-server when it is unset). A bad value stops start-up with a message that
names the variable.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from infrasim_site.env import (
    env_bool,
    env_domain,
    env_host_port,
    env_int,
    env_list,
    env_origin,
    env_rates,
    env_str,
    env_url,
)
from appliances.sessiond import SessionDaemon
from infrasim_site.sealing import load_master_key

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("INFRASIM_VAR_DIR", str(BASE_DIR / "var")))
# The database, keys and secrets live here: nobody else may list or read it.
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
VAR_DIR.chmod(0o700)


def _secret_key() -> str:
    configured = env_str("SECRET_KEY", "")
    if configured:
        if len(configured) < 32:
            raise ImproperlyConfigured("SECRET_KEY: must be at least 32 characters")
        return configured
    # Embedded mode: one random key kept beside the database, so sessions
    # survive restarts without anybody having to invent a secret.
    from django.core.management.utils import get_random_secret_key
    import os

    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(get_random_secret_key())
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = _secret_key()

# --- The seed's variables -------------------------------------------------
BASE_DOMAIN = env_domain("BASE_DOMAIN", "localhost")
MATRIX_DOMAIN = env_domain("MATRIX_DOMAIN", "matrix.localhost")
# The transparency log's origin line (C2SP tlog-checkpoint): names this log in
# every checkpoint and in its verifier key. No spaces, no "+".
LEDGER_ORIGIN = env_str("LEDGER_ORIGIN", f"{BASE_DOMAIN}/infrasim/log")
WEBAUTHN_RP_ID = env_domain("WEBAUTHN_RP_ID", "localhost")
# Where `make run` listens. Without an explicit origin the browser opens
# http://localhost:<port>, and every process (web, worker, manage.py) must
# derive that same origin or passkey ceremonies fail on the origin check.
INFRASIM_PORT = env_int("INFRASIM_PORT", 8080, minimum=1, maximum=65535)
WEBAUTHN_RP_ORIGIN = env_origin("WEBAUTHN_RP_ORIGIN", f"http://localhost:{INFRASIM_PORT}")
WEBAUTHN_RP_NAME = env_str("WEBAUTHN_RP_NAME", "InfraSim")
WG_GATEWAY_ENDPOINT = env_host_port("WG_GATEWAY_ENDPOINT", "127.0.0.1:51820")
# Bucket = prefix + handle; the prefix keeps InfraSim's buckets apart from
# others on a shared S3 and must itself follow S3 naming (lower-case, digits, '-').
S3_BUCKET_PREFIX = env_str("S3_BUCKET_PREFIX", "infrasim-")
if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,29}", S3_BUCKET_PREFIX):
    raise ImproperlyConfigured(f"S3_BUCKET_PREFIX: use up to 30 of a-z, 0-9 and '-', starting alphanumeric; got {S3_BUCKET_PREFIX!r}")

_origin_host = urlsplit(WEBAUTHN_RP_ORIGIN).hostname or ""
if not (_origin_host == WEBAUTHN_RP_ID or _origin_host.endswith("." + WEBAUTHN_RP_ID)):
    raise ImproperlyConfigured(
        f"WEBAUTHN_RP_ORIGIN: host {_origin_host!r} is not WEBAUTHN_RP_ID ({WEBAUTHN_RP_ID!r}) or a subdomain of it"
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [_origin_host, "localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [WEBAUTHN_RP_ORIGIN])

# --- Mesh ---------------------------------------------------------------------------
WG_GATEWAY_INTERFACE = env_str("WG_GATEWAY_INTERFACE", "wg-infrasim")
if not re.fullmatch(r"[A-Za-z0-9_=+.-]{1,15}", WG_GATEWAY_INTERFACE):
    raise ImproperlyConfigured(f"WG_GATEWAY_INTERFACE: not a Linux interface name: {WG_GATEWAY_INTERFACE!r}")
# The Celery queue consumed by a worker on the gateway host (it runs `wg syncconf`).
WG_GATEWAY_QUEUE = env_str("WG_GATEWAY_QUEUE", "mesh")
MESH_DEFAULT_NETWORK = env_str("MESH_DEFAULT_NETWORK", "default")
MESH_IPV4_CIDR = env_str("MESH_IPV4_CIDR", "100.96.0.0/16")
MESH_IPV6_PREFIX = env_str("MESH_IPV6_PREFIX", "fd42:1f5a:7c00::/64")
MESH_DEFAULT_KEEPALIVE = env_int("MESH_DEFAULT_KEEPALIVE", 25, minimum=0, maximum=3600)
MESH_PEER_QUOTA = env_int("MESH_PEER_QUOTA", 20, minimum=1)
MESH_ADDRESS_COOLDOWN_SECONDS = env_int("MESH_ADDRESS_COOLDOWN_SECONDS", 3600, minimum=0)
MESH_RESYNC_SECONDS = env_int("MESH_RESYNC_SECONDS", 60, minimum=1)
MESH_STATS_SECONDS = env_int("MESH_STATS_SECONDS", 15, minimum=1)
for _name, _value, _version in (("MESH_IPV4_CIDR", MESH_IPV4_CIDR, 4), ("MESH_IPV6_PREFIX", MESH_IPV6_PREFIX, 6)):
    try:
        if ipaddress.ip_network(_value).version != _version:
            raise ValueError
    except ValueError:
        raise ImproperlyConfigured(f"{_name}: not an IPv{_version} prefix: {_value!r}") from None

# --- Provisioning backends (each off until its server is named) -------------------
# DNS: RFC 2136 updates signed with TSIG, against any authoritative server.
DNS_SERVER = env_str("DNS_SERVER", "")
DNS_PORT = env_int("DNS_PORT", 53, minimum=1, maximum=65535)
DNS_ZONE = env_domain("DNS_ZONE", BASE_DOMAIN)
DNS_TSIG_KEY_NAME = env_str("DNS_TSIG_KEY_NAME", "")
DNS_TSIG_ALGORITHM = env_str("DNS_TSIG_ALGORITHM", "hmac-sha256")
DNS_TSIG_SECRET = env_str("DNS_TSIG_SECRET", "")
DNS_TARGET_A = env_list("DNS_TARGET_A", [])
DNS_TARGET_AAAA = env_list("DNS_TARGET_AAAA", [])
DNS_TARGET_CNAME = env_str("DNS_TARGET_CNAME", "")
DNS_TTL = env_int("DNS_TTL", 300, minimum=1, maximum=86400)
if DNS_SERVER:
    if not (BASE_DOMAIN == DNS_ZONE or BASE_DOMAIN.endswith("." + DNS_ZONE)):
        raise ImproperlyConfigured(f"DNS_ZONE: BASE_DOMAIN {BASE_DOMAIN!r} is not inside the zone {DNS_ZONE!r}")
    for _name in ("DNS_TSIG_KEY_NAME", "DNS_TSIG_SECRET"):
        if not globals()[_name]:
            raise ImproperlyConfigured(f"{_name}: required when DNS_SERVER is set")
    if DNS_TSIG_ALGORITHM not in {"hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1"}:
        raise ImproperlyConfigured(f"DNS_TSIG_ALGORITHM: unsupported {DNS_TSIG_ALGORITHM!r}")
    if not (DNS_TARGET_A or DNS_TARGET_AAAA or DNS_TARGET_CNAME):
        raise ImproperlyConfigured("DNS_TARGET_A: name at least one of DNS_TARGET_A, DNS_TARGET_AAAA, DNS_TARGET_CNAME")
    if DNS_TARGET_CNAME and (DNS_TARGET_A or DNS_TARGET_AAAA):
        raise ImproperlyConfigured("DNS_TARGET_CNAME: a CNAME cannot sit beside A/AAAA records; use one or the other")
    for _address in DNS_TARGET_A:
        if not re.fullmatch(r"(\d{1,3}\.){3}\d{1,3}", _address):
            raise ImproperlyConfigured(f"DNS_TARGET_A: not an IPv4 address: {_address!r}")

# Matrix: a Synapse homeserver's admin API.
MATRIX_HOMESERVER_URL = env_url("MATRIX_HOMESERVER_URL", "", schemes={"http", "https"})
MATRIX_ADMIN_TOKEN = env_str("MATRIX_ADMIN_TOKEN", "")
if MATRIX_HOMESERVER_URL and not MATRIX_ADMIN_TOKEN:
    raise ImproperlyConfigured("MATRIX_ADMIN_TOKEN: required when MATRIX_HOMESERVER_URL is set")

# S3: any S3-compatible endpoint.
S3_ENDPOINT_URL = env_url("S3_ENDPOINT_URL", "", schemes={"http", "https"})
S3_REGION = env_str("S3_REGION", "us-east-1")
S3_ACCESS_KEY_ID = env_str("S3_ACCESS_KEY_ID", "")
S3_SECRET_ACCESS_KEY = env_str("S3_SECRET_ACCESS_KEY", "")
if S3_ENDPOINT_URL and not (S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY):
    raise ImproperlyConfigured("S3_ACCESS_KEY_ID: S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY are required with S3_ENDPOINT_URL")
PROVISIONING_MAX_ATTEMPTS = env_int("PROVISIONING_MAX_ATTEMPTS", 5, minimum=1, maximum=50)
PROVISIONING_BACKOFF_SECONDS = env_int("PROVISIONING_BACKOFF_SECONDS", 2, minimum=0, maximum=3600)

# --- Appliances: hosts, images, quotas ------------------------------------------
# The hypervisor host that `make run` registers on first start (this machine).
# As root, `qemu:///session` names the system daemon's socket; `make run` then
# runs a session libvirtd of its own user (appliances/sessiond.py) instead.
APPLIANCE_LOCAL_HOST = env_str("APPLIANCE_LOCAL_HOST", "local")
APPLIANCE_HYPERVISOR_USER = env_str("APPLIANCE_HYPERVISOR_USER", "infrasim-vm")
APPLIANCE_HYPERVISOR_DIR = Path(env_str(
    "APPLIANCE_HYPERVISOR_DIR", f"/var/lib/isim/{hashlib.sha256(str(VAR_DIR).encode()).hexdigest()[:8]}"
))
_local_daemon = SessionDaemon(APPLIANCE_HYPERVISOR_DIR, APPLIANCE_HYPERVISOR_USER) if os.geteuid() == 0 else None
APPLIANCE_LOCAL_LIBVIRT_URI = env_str(
    "APPLIANCE_LOCAL_LIBVIRT_URI", _local_daemon.uri if _local_daemon else "qemu:///session"
)
# Overlays, seeds and serial logs of the local host's appliances (QEMU runs
# as the daemon's user, which must reach them).
APPLIANCE_STORAGE_DIR = Path(env_str(
    "APPLIANCE_STORAGE_DIR", str(_local_daemon.storage_dir if _local_daemon else VAR_DIR / "appliances")
))
# The content-addressed image cache, outside the clone so that every checkout
# (and CI on this machine) builds or downloads an image once.
IMAGE_CACHE_DIR = Path(env_str(
    "IMAGE_CACHE_DIR", "/var/cache/infrasim" if os.geteuid() == 0 else str(Path.home() / ".cache" / "infrasim")
))
# Debian mirror for locally built templates; blank: the one this host's apt uses.
IMAGE_DEBIAN_MIRROR = env_url("IMAGE_DEBIAN_MIRROR", "", schemes={"http", "https"})
# cloud-init's own JSON schema (the Makefile takes it from Debian's cloud-init package).
CLOUD_INIT_SCHEMA = Path(env_str(
    "CLOUD_INIT_SCHEMA", str(Path(sys.prefix) / "share" / "cloud-init" / "schema-cloud-config-v1.json")
))
# Where guests send cloud-init's phone home; blank: this server as guests on
# the host reach it (http://<guest gateway address>:INFRASIM_PORT).
APPLIANCE_PHONE_HOME_URL = env_url("APPLIANCE_PHONE_HOME_URL", "", schemes={"http", "https"})
# Guests reach this server by the host's address as they see it (10.0.2.2
# with user-mode networking); requests to that name must be allowed.
_phone_home_host = urlsplit(APPLIANCE_PHONE_HOME_URL).hostname if APPLIANCE_PHONE_HOME_URL else "10.0.2.2"
if _phone_home_host not in ALLOWED_HOSTS:
    ALLOWED_HOSTS.append(_phone_home_host)
APPLIANCE_BOOT_TIMEOUT_SECONDS = env_int("APPLIANCE_BOOT_TIMEOUT_SECONDS", 900, minimum=30)
# How long a request waits for a host's worker to answer (the console log).
APPLIANCE_HOST_ANSWER_SECONDS = env_int("APPLIANCE_HOST_ANSWER_SECONDS", 15, minimum=1, maximum=120)
APPLIANCE_SHUTDOWN_TIMEOUT_SECONDS = env_int("APPLIANCE_SHUTDOWN_TIMEOUT_SECONDS", 60, minimum=1)
APPLIANCE_MAX_ATTEMPTS = env_int("APPLIANCE_MAX_ATTEMPTS", 4, minimum=1, maximum=50)
APPLIANCE_BACKOFF_SECONDS = env_int("APPLIANCE_BACKOFF_SECONDS", 5, minimum=0, maximum=3600)
APPLIANCE_RECONCILE_SECONDS = env_int("APPLIANCE_RECONCILE_SECONDS", 60, minimum=5)
# Per-user quotas over all of a user's appliances.
APPLIANCE_QUOTA_COUNT = env_int("APPLIANCE_QUOTA_COUNT", 5, minimum=0)
APPLIANCE_QUOTA_VCPUS = env_int("APPLIANCE_QUOTA_VCPUS", 8, minimum=0)
APPLIANCE_QUOTA_MEMORY_MIB = env_int("APPLIANCE_QUOTA_MEMORY_MIB", 8192, minimum=0)
APPLIANCE_QUOTA_DISK_GIB = env_int("APPLIANCE_QUOTA_DISK_GIB", 200, minimum=0)

# --- Appliance archives -------------------------------------------------------
# Where finished exports live. The web process serves downloads from here and
# hypervisor workers write here, so with several hosts this is a shared
# mount (NFS or similar), like the database is shared.
ARCHIVE_DIR = Path(env_str("ARCHIVE_DIR", str(VAR_DIR / "archives")))
# Retention: each appliance keeps its newest ARCHIVE_KEEP_PER_APPLIANCE
# archives, and each user's archives together stay under
# ARCHIVE_QUOTA_BYTES_PER_USER (oldest go first; the newest always stays).
ARCHIVE_KEEP_PER_APPLIANCE = env_int("ARCHIVE_KEEP_PER_APPLIANCE", 2, minimum=1, maximum=100)
ARCHIVE_QUOTA_BYTES_PER_USER = env_int("ARCHIVE_QUOTA_BYTES_PER_USER", 20 * 2**30, minimum=0)
# Import caps, checked while the archive streams (decompression bombs stop here).
ARCHIVE_IMPORT_MAX_DISK_BYTES = env_int("ARCHIVE_IMPORT_MAX_DISK_BYTES", 64 * 2**30, minimum=2**20)
ARCHIVE_IMPORT_MAX_TOTAL_BYTES = env_int("ARCHIVE_IMPORT_MAX_TOTAL_BYTES", 64 * 2**30 + 64 * 2**20, minimum=2**20)
# Including keys in an export needs a token, or a session whose passkey was
# checked within this many seconds.
ARCHIVE_SECRETS_RECHECK_SECONDS = env_int("ARCHIVE_SECRETS_RECHECK_SECONDS", 300, minimum=30, maximum=3600)
INFRASIM_VERSION = "0.9.0"

# --- Forensics ------------------------------------------------------------------
# The evidence store (content-addressed memory dumps, read-only once written).
# Hypervisor workers write here and the web process serves downloads, so with
# several hosts it is a shared mount, like ARCHIVE_DIR.
EVIDENCE_DIR = Path(env_str("EVIDENCE_DIR", str(VAR_DIR / "evidence")))
# Operators may capture any running appliance's memory; with this on, an owner
# may capture their own too.
FORENSICS_OWNERS_MAY_ACQUIRE = env_bool("FORENSICS_OWNERS_MAY_ACQUIRE", False)
# Also copy each dump to the requester's S3 bucket (needs the S3 provider and a
# provisioned handle); the local copy stays the one served and verified.
FORENSICS_COPY_TO_S3 = env_bool("FORENSICS_COPY_TO_S3", False)

# --- Secrets at rest --------------------------------------------------------
INFRASIM_MASTER_KEY = load_master_key(
    inline=env_str("INFRASIM_MASTER_KEY", ""),
    key_file=Path(env_str("INFRASIM_MASTER_KEY_FILE", str(VAR_DIR / "master.key"))),
    create=env_str("INFRASIM_MASTER_KEY_FILE", "") == "",
)

# --- Applications -------------------------------------------------------------
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_htmx",
    "django_otp",
    "django_otp_webauthn",
    "channels",
    "infrasim_site",
    "forensics",
    "identity",
    "mesh",
    "appliances",
    "swarm",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "infrasim_site.middleware.ContentSecurityPolicyMiddleware",
    "infrasim_site.middleware.ApiBodyLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Keep last: it makes the chain above run in one thread under ASGI.
    "infrasim_site.middleware.OneThreadMiddleware",
]

ROOT_URLCONF = "infrasim_site.urls"
ASGI_APPLICATION = "infrasim_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "infrasim_site.context_processors.site",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        env_url(
            "DATABASE_URL",
            f"sqlite:///{VAR_DIR / 'infrasim.sqlite3'}",
            schemes={"sqlite", "postgres", "postgresql", "pgsql"},
        ),
        # 0 by default: Django's ASGI handler runs each request's sync code in
        # a thread of its own, so a kept connection is never reused by the web
        # process, only left open until that thread is collected. Celery
        # workers do reuse them; health checks replace one the server dropped.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Django's SQLite backend, creating the database file 0600.
    DATABASES["default"]["ENGINE"] = "infrasim_site.sqlite3"
    # WAL lets the web process read while a worker writes; the busy timeout
    # turns short write contention into a wait instead of "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not :memory:, so the live server, the worker thread and the
    # test share one test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-infrasim.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: broker, cache, channel layer ----------------------------------------
REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes={"redis", "rediss"})

CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # No socket timeout: channels_redis blocks up to 5 s waiting for the
        # next message, and redis-py's default 5 s timeout would kill idle sockets.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}], "prefix": "infrasim:channels"},
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
# A queue per app so a fleet can dedicate workers; hypervisor and gateway hosts
# get queues of their own when those apps route to them.
CELERY_APP_QUEUES = ["default", "identity", "mesh", "appliances", "forensics", "swarm"]
CELERY_TASK_ROUTES = {f"{app}.tasks.*": {"queue": app} for app in CELERY_APP_QUEUES if app != "default"}
# How long a task may run unacknowledged before the broker hands it to another
# worker (acks_late): above the longest task, or tasks run twice.
# A task held by a worker that died is handed out again by the next sweep
# after its visibility timeout; sweep every CELERY_RESTORE_INTERVAL seconds.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=2),
    "unacked_restore_interval": env_int("CELERY_RESTORE_INTERVAL", 10, minimum=1),
    "unacked_restore_throttle": 1,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "purge-abandoned-signups": {"task": "identity.tasks.purge_abandoned_signups", "schedule": 60.0},
    "mesh-expire-peers": {"task": "mesh.tasks.expire_due_peers", "schedule": 5.0},
    "mesh-resync-gateways": {"task": "mesh.tasks.resync_gateways", "schedule": float(MESH_RESYNC_SECONDS)},
    "mesh-collect-stats": {"task": "mesh.tasks.collect_stats", "schedule": float(MESH_STATS_SECONDS)},
    "appliances-reconcile": {"task": "appliances.tasks.reconcile_hosts", "schedule": float(APPLIANCE_RECONCILE_SECONDS)},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Authentication: passkeys only ----------------------------------------------
AUTH_USER_MODEL = "identity.User"
AUTHENTICATION_BACKENDS = ["django_otp_webauthn.backends.WebAuthnBackend"]
AUTH_PASSWORD_VALIDATORS: list = []
LOGIN_URL = "identity:signin"
LOGIN_REDIRECT_URL = "console:dashboard"
LOGOUT_REDIRECT_URL = "identity:signin"

OTP_WEBAUTHN_RP_ID = WEBAUTHN_RP_ID
OTP_WEBAUTHN_RP_NAME = WEBAUTHN_RP_NAME
OTP_WEBAUTHN_ALLOWED_ORIGINS = env_list("WEBAUTHN_ALLOWED_ORIGINS", [WEBAUTHN_RP_ORIGIN])
OTP_WEBAUTHN_ALLOW_PASSWORDLESS_LOGIN = True
OTP_WEBAUTHN_HELPER_CLASS = "identity.passkeys.PasskeyHelper"
OTP_WEBAUTHN_TIMEOUT_SECONDS = env_int("WEBAUTHN_TIMEOUT_SECONDS", 300, minimum=30, maximum=600)
# A sign-up whose passkey never arrives is deleted after this long.
SIGNUP_ABANDON_SECONDS = env_int("SIGNUP_ABANDON_SECONDS", 900, minimum=60)
OPERATOR_ENROLLMENT_SECONDS = env_int("OPERATOR_ENROLLMENT_SECONDS", 86400, minimum=300)
API_TOKEN_MAX_PER_USER = env_int("API_TOKEN_MAX_PER_USER", 50, minimum=1)

# Sessions end 24 h after sign-in, whatever the activity. They are stored
# under a hash of their key, with the passkey they were signed in with.
SESSION_ENGINE = "identity.sessions"
SESSION_COOKIE_AGE = 24 * 3600
# Adding or deleting a passkey and creating a token need a passkey check this recent.
PASSKEY_RECHECK_SECONDS = env_int("PASSKEY_RECHECK_SECONDS", 600, minimum=30, maximum=86400)
SESSION_SAVE_EVERY_REQUEST = False
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_ORIGIN = WEBAUTHN_RP_ORIGIN.startswith("https://")
SESSION_COOKIE_SECURE = SECURE_ORIGIN
CSRF_COOKIE_SECURE = SECURE_ORIGIN
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- API ------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "identity.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "identity.permissions.TokenScope",
    ],
    "DEFAULT_THROTTLE_CLASSES": [
        "infrasim_site.throttling.AnonymousThrottle",
        "infrasim_site.throttling.AccountWriteThrottle",
        "infrasim_site.throttling.ScopedThrottle",
    ],
    # The client address is REMOTE_ADDR, never a forgeable X-Forwarded-For.
    "NUM_PROXIES": 0,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # JSON bounded in size and depth: too large or too deep is a 400/413, not a RecursionError.
    "DEFAULT_PARSER_CLASSES": [
        "infrasim_site.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "infrasim_site.api.Pagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "EXCEPTION_HANDLER": "infrasim_site.api.api_exception_handler",
}
# Requests per period, per client address and per account (429 + Retry-After).
# THROTTLE_RATES="signup=5/min,login=20/min" overrides single scopes.
THROTTLE_RATES = {
    "anonymous": "120/min",
    "account_write": "120/min",
    "signup": "10/hour",
    "login": "30/min",
    "availability": "60/min",
    "token_create": "20/hour",
    "provisioning": "30/hour",
    "mesh_write": "60/min",
    "appliance_write": "60/min",
    "phone_home": "60/min",
    "acquisition": "10/min",
    **env_rates("THROTTLE_RATES"),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "InfraSim API",
    "DESCRIPTION": "Passkey identity, WireGuard mesh, appliances, forensics and the weight swarm.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and Redoc from the installed drf-spectacular-sidecar, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Static files -----------------------------------------------------------------
STATIC_URL = "/static/"
# Browser libraries installed by npm (package.json, `make install`), served as
# our own static files: xterm.js for the appliances' serial console.
STATICFILES_DIRS = [
    ("xterm", BASE_DIR / "node_modules" / "@xterm" / "xterm" / "lib"),
    ("xterm", BASE_DIR / "node_modules" / "@xterm" / "xterm" / "css"),
    ("xterm", BASE_DIR / "node_modules" / "@xterm" / "addon-fit" / "lib"),
]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve straight from the app folders: one process, no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}
