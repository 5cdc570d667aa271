"""cloud-init user-data for appliances, and the NoCloud seed ISO that carries it.

We render our part (hostname, SSH keys, the WireGuard interface, phone home),
merge the user's own cloud-config into it, and check the result against
cloud-init's JSON schema before an appliance ever boots, so a typo is a form
error instead of a guest that silently skips a module.
"""

from __future__ import annotations

import functools
import io
import json
import os
import posixpath
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pycdlib
import yaml
from pycdlib.pycdlibexception import PyCdlibException
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from appliances.sshkeys import clean_authorized_keys

HEADER = "#cloud-config"
MAX_CLOUD_CONFIG_BYTES = 64 * 1024
MAX_NESTING = 32
# Aliases let a short document stand for a huge tree ("billion laughs");
# the tree is bounded as it would be expanded, not as it is written.
MAX_EXPANDED_NODES = 20_000
STR_TAG = "tag:yaml.org,2002:str"
WG0_PATH = "/etc/wireguard/wg0.conf"
OWNED_KEYS = ("phone_home",)
PHONE_HOME_TRIES = 20
MAX_SEED_FILE_BYTES = 1024 * 1024
SEED_FILES = {"user-data": "USERDATA.;1", "meta-data": "METADATA.;1", "network-config": "NETCFG.;1"}


class CloudConfigInvalid(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@functools.lru_cache(maxsize=2)
def _load_validator(schema_path: Path) -> jsonschema.Draft4Validator:
    try:
        schema = json.loads(schema_path.read_text())
    except FileNotFoundError:
        raise ImproperlyConfigured(
            f"cloud-init's schema is missing at {schema_path}; `make install` puts it there"
        ) from None
    return jsonschema.Draft4Validator(schema)


def _schema_problems(error: jsonschema.ValidationError) -> Iterator[tuple[tuple, str]]:
    """(path, message) for one schema error. cloud-init's schema says
    "oneOf" wherever a value may take several shapes, and the bare oneOf
    message ("is not valid under any of the given schemas") tells the user
    nothing; so name the accepted types, or follow the one shape the value
    does have."""
    path = tuple(error.absolute_path)
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        yield path, error.message
        return
    branches: dict[int, list[jsonschema.ValidationError]] = {}
    for sub_error in error.context:
        branches.setdefault(sub_error.relative_schema_path[0], []).append(sub_error)
    wrong_shape: dict[int, jsonschema.ValidationError] = {}
    for index, sub_errors in branches.items():
        for sub_error in sub_errors:
            if not sub_error.relative_path and sub_error.validator in ("type", "enum"):
                wrong_shape[index] = sub_error
                break
    if len(wrong_shape) == len(branches) and all(e.validator == "type" for e in wrong_shape.values()):
        accepted_types: list[str] = []
        for type_error in wrong_shape.values():
            value = type_error.validator_value
            accepted_types += [value] if isinstance(value, str) else value
        yield path, f"{error.instance!r} is not of type {', '.join(repr(t) for t in accepted_types)}"
        return
    candidates = [index for index in branches if index not in wrong_shape]
    if len(candidates) == 1:
        for sub_error in branches[candidates[0]]:
            yield from _schema_problems(sub_error)
        return
    yield path, error.message


def _path_sort_key(path: tuple) -> tuple:
    # List indexes sort as numbers; they never share a position with keys.
    return tuple((0, part) if isinstance(part, int) else (1, part) for part in path)


def validate(config: dict) -> None:
    """All of cloud-init's schema errors at once, sorted by path, as "path: message"."""
    validator = _load_validator(Path(settings.CLOUD_INIT_SCHEMA))
    found: set[tuple[tuple, str]] = set()
    for error in validator.iter_errors(config):
        found.update(_schema_problems(error))
    if found:
        raise CloudConfigInvalid([
            f"{'.'.join(map(str, path)) or 'top level'}: {message}"
            for path, message in sorted(found, key=lambda item: (_path_sort_key(item[0]), item[1]))
        ])


def _check_tree(node: yaml.Node) -> None:
    """Bounded depth and expanded size, and text keys: cloud-config is
    JSON-shaped, and the schema's patternProperties only match text."""
    expanded = 0
    stack: list[tuple[yaml.Node, int]] = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        expanded += 1
        if depth > MAX_NESTING:
            raise CloudConfigInvalid([f"line {current.start_mark.line + 1}: nested deeper than {MAX_NESTING} levels"])
        if expanded > MAX_EXPANDED_NODES:
            raise CloudConfigInvalid([f"the document expands to more than {MAX_EXPANDED_NODES} values"])
        if isinstance(current, yaml.SequenceNode):
            stack += [(child, depth + 1) for child in current.value]
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                if key.tag != STR_TAG:
                    raise CloudConfigInvalid([f"line {key.start_mark.line + 1}: a key must be text; quote it"])
                stack += [(key, depth + 1), (value, depth + 1)]


def _compose_and_construct(text: str) -> Any:
    # yaml.safe_load, with the node tree checked before it is built.
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_tree(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _load_yaml(text: str) -> Any:
    try:
        return _compose_and_construct(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}" if mark else "YAML"
        detail = error.problem or error.context
        if error.problem and error.context:
            detail = f"{error.problem} ({error.context})"
        raise CloudConfigInvalid([f"{where}: {detail}"]) from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        raise CloudConfigInvalid([f"line {line}: character #x{error.character:04x} is not allowed in YAML"]) from None


def _refused_key_problems(config: dict) -> list[str]:
    problems = [f"{key}: set by InfraSim, it cannot be set here" for key in OWNED_KEYS if key in config]
    if "users" in config and not isinstance(config["users"], list):
        # Our list starts with the default user, who receives the SSH keys;
        # only another list can follow it without dropping that user.
        problems.append("users: use the list form (users: [...]) so that the default user stays")
    write_files = config.get("write_files")
    if isinstance(write_files, list):
        for index, entry in enumerate(write_files):
            path = entry.get("path") if isinstance(entry, dict) else None
            if isinstance(path, str) and posixpath.normpath(path) == WG0_PATH:
                problems.append(f"write_files.{index}.path: {WG0_PATH} is written by InfraSim, it cannot be set here")
    return problems


def parse_cloud_config(text: str) -> dict:
    """The user's own cloud-config, checked: header, size, YAML, a mapping,
    none of the keys InfraSim sets, and cloud-init's schema."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CLOUD_CONFIG_BYTES:
        raise CloudConfigInvalid([f"cloud-config: larger than {MAX_CLOUD_CONFIG_BYTES // 1024} KiB"])
    if text.split("\n", 1)[0].rstrip() != HEADER:
        raise CloudConfigInvalid([f"line 1: a cloud-config starts with the line {HEADER}"])
    config = _load_yaml(text)
    if config is None:
        return {}
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise CloudConfigInvalid([f"top level: a cloud-config is a mapping of keys to values, not a {kind}"])
    problems = _refused_key_problems(config)
    if problems:
        raise CloudConfigInvalid(problems)
    validate(config)
    return config


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def hostname_for(name: str) -> str:
    """An appliance's name as an RFC 1123 host label: "Café Server #2" -> "cafe-server-2"."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    label = re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")[:63].rstrip("-")
    return label or "appliance"


def _ours(*, hostname: str, ssh_authorized_keys: list[str], wg0_conf: str | None, phone_home_url: str | None) -> dict:
    config: dict[str, Any] = {
        "hostname": hostname,
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        # Listing the default user keeps it (and the keys below, which
        # cloud-init gives it) when the user's config adds users of its own.
        "users": ["default"],
        "ssh_pwauth": False,
    }
    # cloud-init's schema refuses an empty list.
    if ssh_authorized_keys:
        config["ssh_authorized_keys"] = ssh_authorized_keys
    if wg0_conf is not None:
        config["write_files"] = [{"path": WG0_PATH, "content": wg0_conf, "owner": "root:root", "permissions": "0600"}]
        # runcmd runs once per instance; `enable` is what brings wg0 up on later
        # boots. `restart`, not `--now`: a disk imported from an archive boots
        # with wg0 already up on the old instance's config, before this file
        # is rewritten.
        config["runcmd"] = [["systemctl", "enable", "wg-quick@wg0"], ["systemctl", "restart", "wg-quick@wg0"]]
    if phone_home_url is not None:
        config["phone_home"] = {"url": phone_home_url, "post": ["instance_id", "hostname"], "tries": PHONE_HOME_TRIES}
    return config


def _merge(ours: dict, users: dict) -> dict:
    merged = dict(ours)
    for key, value in users.items():
        if isinstance(merged.get(key), list) and isinstance(value, list):
            merged[key] = merged[key] + value
        else:
            merged[key] = value
    return merged


class _UserDataDumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line values (wg0.conf, scripts) as literal blocks, readable in
    # the seed and in archives.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar(STR_TAG, value, style=style)


_UserDataDumper.add_representer(str, _represent_str)


def build_user_data(
    *,
    hostname: str,
    ssh_authorized_keys: list[str],
    wg0_conf: str | None,
    phone_home_url: str | None,
    user_config: dict | None = None,
) -> str:
    """The user-data document: ours, then the user's config merged in
    (lists concatenated after ours, other keys the user's except ours).
    Without `phone_home_url` (an archive's copy: the URL is a credential of
    this instance) there is no phone_home module."""
    if not _LABEL.fullmatch(hostname):
        raise ValueError(f"{hostname!r} is not a host label; use hostname_for()")
    ours = _ours(
        hostname=hostname,
        ssh_authorized_keys=clean_authorized_keys(ssh_authorized_keys),
        wg0_conf=wg0_conf,
        phone_home_url=phone_home_url,
    )
    user_config = user_config or {}
    problems = _refused_key_problems(user_config)
    if problems:
        raise CloudConfigInvalid(problems)
    merged = _merge(ours, user_config)
    validate(merged)
    # A wide line keeps each SSH key on one line instead of a folded scalar.
    body = yaml.dump(
        merged, Dumper=_UserDataDumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16
    )
    return f"{HEADER}\n{body}"


def build_meta_data(*, instance_id: str, hostname: str) -> str:
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}, sort_keys=False)


def write_seed_iso(
    path: Path,
    *,
    user_data: str,
    meta_data: str,
    network_config: str | None = None,
    mode: int = 0o644,
) -> None:
    """A NoCloud seed (volume id "cidata"), written whole or not at all:
    a temporary file beside `path`, synced, then renamed over it."""
    contents = {"user-data": user_data, "meta-data": meta_data}
    if network_config is not None:
        contents["network-config"] = network_config
    iso = pycdlib.PyCdlib()
    iso.new(joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, text in contents.items():
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), iso_path=f"/{SEED_FILES[name]}", rr_name=name, joliet_path=f"/{name}")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as output:
            iso.write_fp(output)
            output.flush()
            os.fchmod(output.fileno(), mode)
            os.fsync(output.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    finally:
        iso.close()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_seed_iso(path: Path) -> dict[str, str]:
    """The seed's files by their Rock Ridge names, as text."""
    with path.open("rb") as image:
        iso = pycdlib.PyCdlib()
        try:
            iso.open_fp(image)
        except PyCdlibException as error:
            raise ValueError(f"{path} is not a readable ISO 9660 image: {error}") from None
        try:
            if not iso.has_rock_ridge():
                raise ValueError(f"{path} has no Rock Ridge names; not a NoCloud seed written here")
            files: dict[str, str] = {}
            for child in iso.list_children(rr_path="/"):
                if not child.is_file():
                    continue
                if child.get_data_length() > MAX_SEED_FILE_BYTES:
                    raise ValueError(f"{path}: a seed file is larger than {MAX_SEED_FILE_BYTES} bytes")
                name = child.rock_ridge.name().decode()
                buffer = io.BytesIO()
                iso.get_file_from_iso_fp(buffer, rr_path=f"/{name}")
                files[name] = buffer.getvalue().decode()
            return files
        finally:
            iso.close()


# Keys of cloud-init's schema whose values are credentials: passwords, keys,
# registration tokens. An archive exported without secrets leaves them out.
SECRET_KEYS = ("password", "chpasswd", "ssh_keys", "random_seed", "ubuntu_advantage", "ubuntu_pro",
               "landscape", "rh_subscription", "puppet", "chef", "salt_minion", "mcollective")
SECRET_USER_KEYS = ("passwd", "hashed_passwd", "plain_text_passwd")


def redact_secrets(config: dict) -> tuple[dict, list[str]]:
    """The user's cloud-config without its credentials, and the paths of what
    was left out. Beyond the schema's credential keys, a write_files entry
    whose permissions keep it from other users (0600, 0640...) counts as a
    secret: the owner said so when they chose the mode."""
    kept: dict = {}
    redacted: list[str] = []
    for key, value in config.items():
        if key in SECRET_KEYS:
            redacted.append(key)
        elif key == "users" and isinstance(value, list):
            users = []
            for index, user in enumerate(value):
                if isinstance(user, dict):
                    for secret in SECRET_USER_KEYS:
                        if secret in user:
                            redacted.append(f"users[{index}].{secret}")
                    user = {k: v for k, v in user.items() if k not in SECRET_USER_KEYS}
                users.append(user)
            kept[key] = users
        elif key == "write_files" and isinstance(value, list):
            files = []
            for index, entry in enumerate(value):
                if isinstance(entry, dict) and _private_mode(entry.get("permissions")):
                    redacted.append(f"write_files[{index}] ({entry.get('path', '?')})")
                    continue
                files.append(entry)
            if files:
                kept[key] = files
        else:
            kept[key] = value
    return kept, redacted


def _private_mode(permissions) -> bool:
    try:
        mode = int(str(permissions), 8)
    except ValueError:
        return False
    return not mode & 0o004
