"""Run this machine's local hypervisor in the foreground: a session libvirtd
of a dedicated user (`make run` starts it when it runs as root, where
`qemu:///session` would mean a system daemon this machine may not have)."""

import os
import shutil

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from appliances.sessiond import SessionDaemon


class Command(BaseCommand):
    help = "Run the local session libvirtd of APPLIANCE_HYPERVISOR_USER (needs root)."

    def handle(self, *args, **options):
        if os.geteuid() != 0:
            raise CommandError("needs root (as another user, qemu:///session starts its own daemon)")
        if not shutil.which("libvirtd"):
            raise CommandError("libvirtd is missing (Debian: libvirt-daemon libvirt-daemon-driver-qemu)")
        SessionDaemon(settings.APPLIANCE_HYPERVISOR_DIR, settings.APPLIANCE_HYPERVISOR_USER).exec()
