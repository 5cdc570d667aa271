"""`terraform/main.tf` for an appliance archive: a Terraform module that
recreates the appliance from the archive's own files with the
dmacvicar/libvirt provider.

The module is meant to be run from `terraform/` inside the extracted archive:
it uploads `../disk.qcow2` into a storage pool, builds the NoCloud seed from
`../cloud-init/user-data` and `../cloud-init/meta-data`, and defines and starts
a q35 domain with the disk as virtio `vda`, the seed as a SATA cdrom, a virtio
NIC on a libvirt network and a serial console.

Schema. The provider was rewritten for 0.9 and its schema follows libvirt's
XML, so every attribute written here was checked against the provider's own
repository (github.com/dmacvicar/terraform-provider-libvirt, tags v0.9.0 to
v0.9.7 and main after v0.9.7):

- docs/resources/domain.md, volume.md, cloudinit_disk.md, docs/index.md and
  docs/schema-mapping.md (interfaces take no `type`: the source branch that is
  set defines it);
- examples/alpine_cloudinit.tf and examples/two_vms_with_cloudinit.tf (how the
  cloud-init ISO is uploaded into a volume and attached as a cdrom);
- internal/provider/volume_upload.go (`create.content.url` takes http(s)://,
  file:// or a plain absolute path, opened by the provider on the machine that
  runs Terraform and streamed to libvirt, so it works with a remote URI too);
- internal/provider/volume_resource.go (with an upload, the volume is created
  at the uploaded file's size and `capacity` is read back from libvirt, which
  reports a qcow2 volume's virtual size from its header; so the capacity
  written here must be the disk's virtual size, not the file's size);
- internal/provider/domain_resource_test.go and provider issue #1332 (a serial
  and a console with only a `target` become libvirt's default, a pty, which is
  what `virsh console` attaches to).

v0.9.0 still had the pre-0.9.1 schema (`format` as a string on volumes, no
`memory_unit`, no `os.type_machine`), so the version constraint excludes it.

Output is deterministic and plain ASCII. Every string that comes from the
user (the name, the OS text) goes through `hcl_string`, which escapes it so
that Terraform reads back exactly the same characters and never evaluates a
`${...}` or `%{...}` in it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Union

PROVIDER_SOURCE = "dmacvicar/libvirt"
# "~> 0.9" is the 0.9 series; 0.9.0's schema differs from the one written here.
PROVIDER_VERSION = "~> 0.9, >= 0.9.1"

# Paths relative to the module directory (terraform/ in the archive).
DISK_PATH = "${path.module}/../disk.qcow2"
USER_DATA_PATH = "${path.module}/../cloud-init/user-data"
META_DATA_PATH = "${path.module}/../cloud-init/meta-data"

# Volume names become file names in a directory pool: keep them to characters
# every pool accepts.
_UNSAFE_IN_VOLUME_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_VOLUME_STEM_MAX = 64

_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}

INDENT = "  "


@dataclass(frozen=True)
class TerraformSpec:
    name: str  # appliance name, used as the libvirt domain name
    vcpus: int
    memory_mib: int
    disk_bytes: int  # virtual size of disk.qcow2
    os: str  # free text such as "Debian 12"; only ever put in the description


def hcl_string(value: str) -> str:
    """`value` as an HCL quoted string literal that evaluates to exactly
    `value`: quotes, backslashes and control characters escaped, the `$` of
    `${` and the `%` of `%{` written as \\u escapes so they are text and not
    template sequences, and anything outside printable ASCII written as a \\u
    or \\U escape so the file stays ASCII.

    HCL's own spelling for a literal `${` is `$${`, and Terraform reads it;
    but python-hcl2 (which reads these files in the tests and elsewhere)
    fails on an unbalanced `$${` and does not unescape inside `$${...}`.
    Template sequences are recognised before escapes are decoded, so
    `\\u0024{` is text to both parsers."""
    if not isinstance(value, str):
        raise TypeError(f"hcl_string takes a str, not {type(value).__name__}")
    pieces = ['"']
    for index, char in enumerate(value):
        code = ord(char)
        following = value[index + 1] if index + 1 < len(value) else ""
        if char in _SHORT_ESCAPES:
            pieces.append(_SHORT_ESCAPES[char])
        elif char in "$%" and following == "{":
            pieces.append(f"\\u{code:04X}")
        elif 0x20 <= code < 0x7F:
            pieces.append(char)
        elif 0xD800 <= code <= 0xDFFF:
            # Not a Unicode scalar value: no HCL escape stands for it.
            raise ValueError(f"lone surrogate U+{code:04X} cannot be written as HCL")
        elif code <= 0xFFFF:
            pieces.append(f"\\u{code:04X}")
        else:
            pieces.append(f"\\U{code:08X}")
    pieces.append('"')
    return "".join(pieces)


@dataclass(frozen=True)
class Expression:
    """HCL written as is (references, function calls). Only for constants in
    this module: a user's text is a plain str, which is always escaped."""

    source: str


@dataclass(frozen=True)
class Block:
    type: str
    labels: tuple[str, ...]
    body: tuple[Item, ...]


Value = Union[bool, int, str, Expression, dict, list]
Item = Union[tuple[str, Value], Block]


def render_main_tf(spec: TerraformSpec) -> str:
    """The archive's terraform/main.tf for `spec`, formatted as `terraform fmt`
    formats it."""
    _check_spec(spec)
    stem = volume_stem(spec.name)
    blocks = (
        Block("terraform", (), (
            Block("required_providers", (), (
                ("libvirt", {"source": PROVIDER_SOURCE, "version": PROVIDER_VERSION}),
            )),
        )),
        Block("provider", ("libvirt",), (("uri", Expression("var.libvirt_uri")),)),
        _variable("libvirt_uri", "libvirt connection URI", "qemu:///system"),
        _variable("pool", "Storage pool the disk and the cloud-init seed are uploaded into", "default"),
        _variable("network", "libvirt network the appliance's NIC is attached to", "default"),
        _variable("domain_type", "Domain type: kvm, or qemu where the host has no KVM", "kvm"),
        Block("resource", ("libvirt_volume", "disk"), (
            ("name", f"{stem}.qcow2"),
            ("pool", Expression("var.pool")),
            # Must equal the qcow2's virtual size: the provider reads the
            # capacity back from libvirt after the upload (see module docstring).
            ("capacity", spec.disk_bytes),
            ("target", {"format": {"type": "qcow2"}}),
            ("create", {"content": {"url": Expression(f"abspath({_quoted_template(DISK_PATH)})")}}),
        )),
        Block("resource", ("libvirt_cloudinit_disk", "seed"), (
            ("name", f"{stem}-cloudinit"),
            ("user_data", Expression(f"file({_quoted_template(USER_DATA_PATH)})")),
            ("meta_data", Expression(f"file({_quoted_template(META_DATA_PATH)})")),
        )),
        # The provider builds the seed ISO on the machine running Terraform;
        # uploading it into a volume lets a remote libvirt host attach it.
        Block("resource", ("libvirt_volume", "seed"), (
            ("name", f"{stem}-cloudinit.iso"),
            ("pool", Expression("var.pool")),
            ("create", {"content": {"url": Expression("libvirt_cloudinit_disk.seed.path")}}),
        )),
        Block("resource", ("libvirt_domain", "appliance"), (
            ("name", spec.name),
            ("description", _description(spec.os)),
            ("type", Expression("var.domain_type")),
            ("vcpu", spec.vcpus),
            ("memory", spec.memory_mib),
            ("memory_unit", "MiB"),
            ("running", True),
            ("os", {
                "type": "hvm",
                "type_arch": "x86_64",
                "type_machine": "q35",
                "boot_devices": [{"dev": "hd"}],
            }),
            ("devices", {
                "disks": [
                    {
                        "source": {"volume": {
                            "pool": Expression("libvirt_volume.disk.pool"),
                            "volume": Expression("libvirt_volume.disk.name"),
                        }},
                        "target": {"dev": "vda", "bus": "virtio"},
                        "driver": {"type": "qcow2"},
                    },
                    {
                        "device": "cdrom",
                        "source": {"volume": {
                            "pool": Expression("libvirt_volume.seed.pool"),
                            "volume": Expression("libvirt_volume.seed.name"),
                        }},
                        "target": {"dev": "sda", "bus": "sata"},
                    },
                ],
                "interfaces": [
                    {
                        "model": {"type": "virtio"},
                        "source": {"network": {"network": Expression("var.network")}},
                    },
                ],
                # No source: libvirt makes both a pty, and the console is the
                # serial port's, so `virsh console` reaches ttyS0.
                "serials": [{"target": {"type": "isa-serial", "port": 0}}],
                "consoles": [{"target": {"type": "serial", "port": 0}}],
            }),
        )),
        Block("output", ("domain_uuid",), (
            ("description", "UUID of the appliance's libvirt domain"),
            ("value", Expression("libvirt_domain.appliance.uuid")),
        )),
    )
    lines = list(_HEADER)
    for block in blocks:
        lines.append("")
        _render_block(block, 0, lines)
    return "\n".join(lines) + "\n"


def volume_stem(name: str) -> str:
    """A pool-safe base name for the appliance's volumes: the name itself when
    it is already plain, else a cleaned-up form plus a hash of the real name,
    so two names that clean up the same way still get different volumes."""
    slug = _UNSAFE_IN_VOLUME_NAME.sub("-", name).strip("-.")[:_VOLUME_STEM_MAX]
    if slug == name:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug or 'appliance'}-{digest}"


def _quoted_template(template: str) -> str:
    """A quoted HCL template written by this module, `${...}` left live (for
    `path.module`); never for a user's text."""
    if any(char in template for char in '"\\\n') or not template.isascii():
        raise ValueError(f"not a plain template: {template!r}")
    return f'"{template}"'


_HEADER = (
    "# Recreates this InfraSim appliance with the dmacvicar/libvirt provider.",
    "# Extract the whole archive, then from this directory:",
    "#   terraform init",
    "#   terraform apply",
    "# disk.qcow2 and the cloud-init seed are uploaded into var.pool, the NIC",
    "# joins var.network, and `virsh console` reaches the serial console.",
)


def _check_spec(spec: TerraformSpec) -> None:
    if not isinstance(spec.name, str) or not spec.name:
        raise ValueError("the appliance needs a name")
    if not isinstance(spec.os, str):
        raise TypeError("os must be a str")
    for field_name in ("vcpus", "memory_mib", "disk_bytes"):
        value = getattr(spec, field_name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field_name} must be a positive integer, not {value!r}")


def _description(os_text: str) -> str:
    return f"InfraSim appliance ({os_text})" if os_text else "InfraSim appliance"


def _variable(name: str, description: str, default: str) -> Block:
    return Block("variable", (name,), (
        ("description", description),
        ("type", Expression("string")),
        ("default", default),
    ))


# --- Rendering ------------------------------------------------------------------------------
# `terraform fmt` aligns the `=` of consecutive one-line attributes and puts
# one space before the `=` of an attribute whose value opens a bracket, and
# such a line ends the run. The renderer follows the same rule so the file is
# already in canonical form (the tests check it against `terraform fmt`).


def _render_block(block: Block, depth: int, lines: list[str]) -> None:
    header = " ".join([block.type, *(hcl_string(label) for label in block.labels)])
    lines.append(f"{INDENT * depth}{header} {{")
    sections: list[list[Item]] = []
    for item in block.body:
        one_line = not isinstance(item, Block) and _is_one_line(item[1])
        if one_line and sections and _is_one_line_section(sections[-1]):
            sections[-1].append(item)
        else:
            sections.append([item])
    for index, section in enumerate(sections):
        if index:
            lines.append("")
        if isinstance(section[0], Block):
            _render_block(section[0], depth + 1, lines)
        else:
            _render_attributes(section, depth + 1, lines)
    lines.append(f"{INDENT * depth}}}")


def _is_one_line_section(section: list[Item]) -> bool:
    return not isinstance(section[0], Block) and _is_one_line(section[0][1])


def _render_attributes(attributes: list[tuple[str, Value]], depth: int, lines: list[str]) -> None:
    pad = INDENT * depth
    run: list[tuple[str, Value]] = []

    def flush() -> None:
        width = max((len(key) for key, _ in run), default=0)
        for key, value in run:
            lines.append(f"{pad}{key.ljust(width)} = {_one_line(value)}")
        run.clear()

    for key, value in attributes:
        if _is_one_line(value):
            run.append((key, value))
            continue
        flush()
        if isinstance(value, dict):
            lines.append(f"{pad}{key} = {{")
            _render_attributes(list(value.items()), depth + 1, lines)
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{key} = [")
            inner = INDENT * (depth + 1)
            for position, element in enumerate(value):
                if not isinstance(element, dict):
                    raise TypeError("lists hold objects only")
                lines.append(f"{inner}{{")
                _render_attributes(list(element.items()), depth + 2, lines)
                lines.append(f"{inner}}}" + ("," if position < len(value) - 1 else ""))
            lines.append(f"{pad}]")
    flush()


def _is_one_line(value: Value) -> bool:
    return not isinstance(value, (dict, list))


def _one_line(value: Value) -> str:
    # bool before int: True is an int in Python.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return hcl_string(value)
    if isinstance(value, Expression):
        return value.source
    raise TypeError(f"cannot write {type(value).__name__} as HCL")
