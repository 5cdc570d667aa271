"""The catalog InfraSim ships: the seed's Alpine, Kali and Ubuntu, Debian,
and a Debian image built on the host itself (for hosts that cannot reach
image sites). Remote entries read their digest from the publisher's
checksum list at download time; the download is then verified against it."""

from django.db import migrations

CATALOG = [
    dict(slug="debian-bookworm-local", name="Debian 12 (built on this host)", os="Debian 12 (bookworm)",
         recipe="debian-bookworm-local", checksum_algorithm="sha256", default_disk_gib=4, min_disk_gib=2,
         min_memory_mib=256, default_user="debian", sort_order=10),
    dict(slug="debian-12", name="Debian 12 generic cloud", os="Debian 12 (bookworm)",
         source_url="https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
         checksum_url="https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS",
         checksum_algorithm="sha512", default_disk_gib=8, min_disk_gib=3, min_memory_mib=512,
         default_user="debian", sort_order=20),
    dict(slug="ubuntu-24.04", name="Ubuntu 24.04 LTS cloud image", os="Ubuntu 24.04 (noble)",
         source_url="https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img",
         checksum_url="https://cloud-images.ubuntu.com/releases/24.04/release/SHA256SUMS",
         checksum_algorithm="sha256", default_disk_gib=10, min_disk_gib=4, min_memory_mib=1024,
         default_user="ubuntu", sort_order=30),
    dict(slug="alpine-3.20", name="Alpine 3.20 cloud (NoCloud, BIOS)", os="Alpine Linux 3.20",
         source_url="https://dl-cdn.alpinelinux.org/alpine/v3.20/releases/cloud/nocloud_alpine-3.20.3-x86_64-bios-cloudinit-r0.qcow2",
         checksum_url="https://dl-cdn.alpinelinux.org/alpine/v3.20/releases/cloud/nocloud_alpine-3.20.3-x86_64-bios-cloudinit-r0.qcow2.sha512",
         checksum_algorithm="sha512", default_disk_gib=2, min_disk_gib=1, min_memory_mib=256,
         default_user="alpine", sort_order=40),
    dict(slug="kali-2025.1", name="Kali Linux 2025.1 generic cloud", os="Kali Linux 2025.1",
         source_url="https://kali.download/cloud-images/kali-2025.1/kali-linux-2025.1-cloud-genericcloud-amd64.tar.xz",
         checksum_url="https://kali.download/cloud-images/kali-2025.1/SHA256SUMS",
         checksum_algorithm="sha256", default_disk_gib=20, min_disk_gib=12, min_memory_mib=2048,
         default_user="kali", sort_order=50),
]


def add_catalog(apps, schema_editor):
    Template = apps.get_model("appliances", "Template")
    for entry in CATALOG:
        Template.objects.update_or_create(slug=entry["slug"], defaults=entry)


def remove_catalog(apps, schema_editor):
    apps.get_model("appliances", "Template").objects.filter(slug__in=[e["slug"] for e in CATALOG]).delete()


class Migration(migrations.Migration):
    dependencies = [("appliances", "0001_initial")]
    operations = [migrations.RunPython(add_catalog, remove_catalog)]
