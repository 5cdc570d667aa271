"""The domain XML writer: golden files for the four kinds of guest, escaping,
and the identities (UUID, MAC) that must not drift between runs or hosts.

After an intended change to the XML, rewrite the golden files with
`INFRASIM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_domain_xml.py` and
review the diff."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from appliances.hypervisor import METADATA_NS, DomainSpec, domain_xml, mac_for

GOLDEN = Path(__file__).parent / "golden"

DISK_BOOT = DomainSpec(
    name="infrasim-42-web",
    uuid="6f1c6a52-4a8e-4d3c-9a53-0c4f1b8e2d17",
    title="web (alice)",
    vcpus=2,
    memory_mib=1024,
    accel="tcg",
    disk="/var/lib/infrasim/hosts/hv1/infrasim-42-web/disk.qcow2",
    seed_iso="/var/lib/infrasim/hosts/hv1/infrasim-42-web/seed.iso",
    serial_log="/var/lib/infrasim/hosts/hv1/infrasim-42-web/serial.log",
    metadata={"appliance": "42", "owner": "7", "template": "debian-12"},
)
KERNEL_BOOT = replace(
    DISK_BOOT,
    kernel="/var/cache/infrasim/blobs/sha256-7fc3/vmlinuz",
    initrd="/var/cache/infrasim/blobs/sha256-7fc3/initrd.img",
    cmdline="root=/dev/vda rw console=ttyS0",
)
SPECS = {
    "disk-tcg": DISK_BOOT,
    "disk-kvm": replace(DISK_BOOT, accel="kvm"),
    "kernel-tcg": KERNEL_BOOT,
    "kernel-kvm": replace(KERNEL_BOOT, accel="kvm"),
}


@pytest.mark.parametrize("kind", SPECS)
def test_domain_xml_matches_its_golden_file(kind):
    golden = GOLDEN / f"domain-{kind}.xml"
    xml = domain_xml(SPECS[kind])
    if os.environ.get("INFRASIM_UPDATE_GOLDEN") == "1":
        golden.write_text(xml)
    assert xml == golden.read_text()


@pytest.mark.parametrize(("accel", "domain_type", "cpu_mode"), [("tcg", "qemu", "maximum"), ("kvm", "kvm", "host-passthrough")])
def test_acceleration_picks_the_domain_type_and_cpu(accel, domain_type, cpu_mode):
    root = ET.fromstring(domain_xml(replace(DISK_BOOT, accel=accel)))

    assert root.get("type") == domain_type
    assert root.find("cpu").get("mode") == cpu_mode


def test_kernel_boot_has_no_boot_device_and_disk_boot_no_kernel():
    kernel_os = ET.fromstring(domain_xml(KERNEL_BOOT)).find("os")
    disk_os = ET.fromstring(domain_xml(DISK_BOOT)).find("os")

    assert kernel_os.findtext("kernel") == KERNEL_BOOT.kernel and kernel_os.find("boot") is None
    assert kernel_os.findtext("cmdline") == "root=/dev/vda rw console=ttyS0"
    assert disk_os.find("kernel") is None and disk_os.find("boot").get("dev") == "hd"


def test_text_and_attributes_are_escaped():
    hostile = 'Tom & "Jerry" <script>'
    spec = replace(DISK_BOOT, title=hostile, metadata={"note": hostile, "amp": "a&b"},
                   serial_log="/srv/a&b/<serial>.log")

    xml = domain_xml(spec)
    root = ET.fromstring(xml)

    assert "<script>" not in xml
    assert root.findtext("title") == hostile
    assert root.find("devices/serial/log").get("file") == "/srv/a&b/<serial>.log"
    appliance = root.find(f"metadata/{{{METADATA_NS}}}appliance")
    assert dict(appliance.attrib) == {"note": hostile, "amp": "a&b"}


def test_metadata_is_one_element_in_our_namespace():
    xml = domain_xml(DISK_BOOT)
    metadata = ET.fromstring(xml).find("metadata")

    assert [child.tag for child in metadata] == [f"{{{METADATA_NS}}}appliance"]
    assert dict(metadata[0].attrib) == {"appliance": "42", "owner": "7", "template": "debian-12"}
    assert f'<infrasim:appliance xmlns:infrasim="{METADATA_NS}"' in xml


def test_no_metadata_no_metadata_element():
    assert ET.fromstring(domain_xml(replace(DISK_BOOT, metadata={}))).find("metadata") is None


def test_mac_is_derived_from_the_uuid_and_stable():
    mac = mac_for(DISK_BOOT.uuid)

    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
    assert mac == mac_for(DISK_BOOT.uuid.upper())  # the UUID, not its spelling
    assert mac != mac_for("0b9d2a3e-5f7c-4e1a-8c6d-2f4e6a8b0c1d")
    assert mac == "52:54:00:00:b9:b0"  # the same in every release: a guest's network config keys on it
    assert ET.fromstring(domain_xml(DISK_BOOT)).find("devices/interface/mac").get("address") == mac


def test_an_explicit_mac_wins():
    spec = replace(DISK_BOOT, mac="52:54:00:aa:bb:cc")

    assert ET.fromstring(domain_xml(spec)).find("devices/interface/mac").get("address") == "52:54:00:aa:bb:cc"


def test_the_uuid_is_written_in_canonical_form():
    spec = replace(DISK_BOOT, uuid=DISK_BOOT.uuid.upper())

    assert ET.fromstring(domain_xml(spec)).findtext("uuid") == DISK_BOOT.uuid
    assert domain_xml(spec) == domain_xml(DISK_BOOT)


def test_no_seed_no_cdrom():
    devices = ET.fromstring(domain_xml(replace(DISK_BOOT, seed_iso=None))).find("devices")

    assert [disk.get("device") for disk in devices.iterfind("disk")] == ["disk"]


@pytest.mark.parametrize(("change", "message"), [
    ({"accel": "hvf"}, "accel must be"),
    ({"uuid": "not-a-uuid"}, "badly formed"),
    ({"vcpus": 0}, "cannot run a guest"),
    ({"initrd": "/boot/initrd.img"}, "needs a kernel"),
    ({"mac": "52:54:00:AA:BB:CC"}, "MAC"),
    ({"metadata": {"bad key": "x"}}, "not an XML attribute name"),
    ({"metadata": {"xmlns:evil": "x"}}, "not an XML attribute name"),
])
def test_impossible_specs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        replace(DISK_BOOT, **change)
