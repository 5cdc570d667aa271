"""Loaded with `-p tests.bootstrap`, before Django's settings are read.

It makes the environment the settings need: a scratch var/ directory, the
origin of the live ASGI server the suite starts, and a reachable Redis: the
one in REDIS_URL if it answers, otherwise a private redis-server started here
and stopped when the run ends.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from infrasim_site.localredis import free_port, redis_answers, start_private_redis


_workdir = tempfile.mkdtemp(prefix="infrasim-test-")
atexit.register(shutil.rmtree, _workdir, True)

os.environ["INFRASIM_VAR_DIR"] = _workdir
# The suite runs on SQLite unless told to use another server (the suite also
# passes on PostgreSQL: INFRASIM_TEST_DATABASE_URL=postgres://...).
if os.environ.get("INFRASIM_TEST_DATABASE_URL"):
    os.environ["DATABASE_URL"] = os.environ["INFRASIM_TEST_DATABASE_URL"]
else:
    os.environ.pop("DATABASE_URL", None)
LIVE_SERVER_PORT = free_port()
os.environ["WEBAUTHN_RP_ID"] = "localhost"
os.environ["WEBAUTHN_RP_ORIGIN"] = f"http://localhost:{LIVE_SERVER_PORT}"
os.environ["ALLOWED_HOSTS"] = "localhost,127.0.0.1,testserver"
# Guests under test phone home to the live server through their NAT's host address.
os.environ["APPLIANCE_PHONE_HOME_URL"] = f"http://10.0.2.2:{LIVE_SERVER_PORT}"
# The suite signs many people up from one address; the throttling tests set
# their own small limits.
os.environ["THROTTLE_RATES"] = ",".join(
    f"{scope}=100000/min"
    for scope in ("anonymous", "account_write", "signup", "login", "availability", "token_create", "provisioning", "mesh_write",
                  "appliance_write", "phone_home", "acquisition")
)

_redis = os.environ.get("REDIS_URL", "")
if not _redis or not redis_answers(_redis):
    _redis, _redis_process = start_private_redis(_workdir)
    atexit.register(_redis_process.terminate)
os.environ["REDIS_URL"] = _redis
