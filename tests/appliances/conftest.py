"""Appliance rows for API tests that need no hypervisor: a host whose queue
no worker consumes, so queued jobs wait and the tests see the request side."""

from __future__ import annotations

import importlib
import subprocess

import pytest
from django.apps import apps

from appliances.models import Host

TEMPLATE = "debian-bookworm-local"


def ensure_catalog() -> None:
    """Transactional tests empty every table, the migrated catalog too."""
    importlib.import_module("appliances.migrations.0002_catalog").add_catalog(apps, None)


def make_host(name: str = "idle", **fields) -> Host:
    ensure_catalog()
    values = dict(
        libvirt_uri="qemu:///session", queue=f"host.test-{name}", vcpus=16, memory_mib=16384, disk_gib=500,
        storage_dir=f"/nonexistent/{name}", image_cache_dir="/nonexistent/cache",
    )
    values.update(fields)
    return Host.objects.create(name=name, **values)


@pytest.fixture()
def idle_host(db):
    return make_host()


def ssh_public_key(tmp_path, kind: str = "ed25519") -> str:
    path = tmp_path / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return (tmp_path / f"id_{kind}.pub").read_text().strip()
