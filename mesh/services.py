"""Mesh: networks, peers, keys and keeping the gateway in sync.

Every change that alters what the gateway must hold (peers, keys, shares,
network rules) bumps the network's generation and, once committed, queues a
sync on the gateway host's queue. The sync renders the whole interface and
its isolation policy from the database and applies them with `wg syncconf`
and `nft -f`, so it is idempotent and also repairs drift when run
periodically.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from forensics import ledger
from identity.handles import normalize as normalize_handle
from identity.models import Identity, User
from infrasim_site.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from infrasim_site.events import publish_to_user
from infrasim_site.queueing import enqueue_on_commit
from infrasim_site.steps import retry_later
from infrasim_site.sealing import seal, unseal
from infrasim_site.text import clean_name
from mesh import gateway, ipam, keys, policy, wgconf
from mesh.models import AddressLease, MeshNetwork, NetworkRule, Peer, PeerShare

log = logging.getLogger(__name__)

MAX_KEEPALIVE = 3600
PEER_NAME_MAX = 64
NETNS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# --- Networks -------------------------------------------------------------------------


def _parse_prefix(value: str, *, field: str, version: int):
    try:
        prefix = ipaddress.ip_network(value, strict=True)
    except (ValueError, TypeError):
        raise InvalidInput(f"'{value}' is not a network prefix like 100.96.0.0/16.", field=field, code="invalid") from None
    if prefix.version != version:
        raise InvalidInput(f"Expected an IPv{version} prefix.", field=field, code="wrong_family")
    return prefix


def validate_network_prefixes(*, ipv4_cidr: str, ipv6_prefix: str, exclude_pk: int | None = None):
    v4 = _parse_prefix(ipv4_cidr, field="ipv4_cidr", version=4)
    v6 = _parse_prefix(ipv6_prefix, field="ipv6_prefix", version=6)
    if v4.prefixlen > 30:
        raise InvalidInput("An IPv4 pool needs at least a /30.", field="ipv4_cidr", code="too_small")
    if v6.prefixlen > 126:
        raise InvalidInput("An IPv6 pool needs at least a /126.", field="ipv6_prefix", code="too_small")
    if not v6.subnet_of(ipaddress.ip_network("fc00::/7")):
        raise InvalidInput("The IPv6 prefix must be a unique local address (fc00::/7).", field="ipv6_prefix", code="not_ula")
    for other in MeshNetwork.objects.exclude(pk=exclude_pk):
        if v4.overlaps(ipaddress.ip_network(other.ipv4_cidr)):
            raise Conflict(f"{v4} overlaps network '{other.name}' ({other.ipv4_cidr}).", field="ipv4_cidr", code="overlap")
        if v6.overlaps(ipaddress.ip_network(other.ipv6_prefix)):
            raise Conflict(f"{v6} overlaps network '{other.name}' ({other.ipv6_prefix}).", field="ipv6_prefix", code="overlap")
    return v4, v6


def _require_operator(actor: User | None, what: str) -> None:
    # actor None is the system itself (migrations, management commands).
    if actor is not None and not actor.is_staff:
        raise PermissionDenied(f"Only operators {what}.")


def _clean_interface(value) -> str:
    if not isinstance(value, str) or not policy.SAFE_NAME.fullmatch(value):
        raise InvalidInput("A Linux interface name: 1-15 of A-Z a-z 0-9 _ = + . -", field="interface", code="invalid")
    return value


def _clean_netns(value) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not NETNS_NAME.fullmatch(value) or value in {".", ".."}:
        raise InvalidInput("A network namespace name (ip netns), or blank for the host's own.",
                           field="gateway_netns", code="invalid")
    return value


@transaction.atomic
def network_create(
    *,
    actor: User | None,
    name: str,
    ipv4_cidr: str,
    ipv6_prefix: str,
    endpoint: str | None = None,
    listen_port: int | None = None,
    interface: str | None = None,
    gateway_netns: str = "",
    gateway_queue: str | None = None,
) -> MeshNetwork:
    _require_operator(actor, "manage networks")
    v4, v6 = validate_network_prefixes(ipv4_cidr=ipv4_cidr, ipv6_prefix=ipv6_prefix)
    host, port = settings.WG_GATEWAY_ENDPOINT
    private_key, public_key = keys.generate_keypair()
    network = MeshNetwork(
        name=name,
        ipv4_cidr=str(v4),
        ipv6_prefix=str(v6),
        endpoint=endpoint or f"{host}:{port}",
        listen_port=listen_port or port,
        interface=_clean_interface(interface or settings.WG_GATEWAY_INTERFACE),
        gateway_netns=_clean_netns(gateway_netns),
        gateway_queue=gateway_queue or settings.WG_GATEWAY_QUEUE,
        gateway_public_key=public_key,
        gateway_private_key_sealed=seal(private_key.encode()),
        default_keepalive=settings.MESH_DEFAULT_KEEPALIVE,
        peer_quota=settings.MESH_PEER_QUOTA,
        address_cooldown_seconds=settings.MESH_ADDRESS_COOLDOWN_SECONDS,
    )
    network.full_clean()
    network.save()
    ledger.record(
        kind="mesh.network.created",
        actor=ledger.actor_label(actor),
        subject=f"mesh_network:{network.pk}",
        payload={"name": name, "ipv4": str(v4), "ipv6": str(v6), "gateway_public_key": public_key},
    )
    network_bump(network)
    return network


def default_network() -> MeshNetwork | None:
    """The network named in settings, if it exists yet. Reads never create it."""
    return MeshNetwork.objects.filter(name=settings.MESH_DEFAULT_NETWORK).first()


def network_ensure_default() -> MeshNetwork:
    """The network named in settings, created by the first write that needs it."""
    network = default_network()
    if network is not None:
        return network
    try:
        # network_create is atomic, so inside a caller's transaction this is a
        # savepoint: losing the race to another first use rolls back only it.
        return network_create(
            actor=None,
            name=settings.MESH_DEFAULT_NETWORK,
            ipv4_cidr=settings.MESH_IPV4_CIDR,
            ipv6_prefix=settings.MESH_IPV6_PREFIX,
        )
    except (IntegrityError, ValidationError, Conflict):
        return MeshNetwork.objects.get(name=settings.MESH_DEFAULT_NETWORK)


def network_bump(network: MeshNetwork) -> None:
    """Record that the gateway config changed, and sync it after commit."""
    MeshNetwork.objects.filter(pk=network.pk).update(generation=F("generation") + 1)
    enqueue_on_commit("mesh.tasks.sync_gateway", (network.pk,), queue=network.gateway_queue)


NETWORK_EDITABLE = {
    "name", "endpoint", "listen_port", "interface", "gateway_netns", "gateway_queue", "default_keepalive",
    "peer_quota", "address_cooldown_seconds",
}


def validate_network_update(network: MeshNetwork, fields: dict) -> dict:
    """The cleaned fields, or InvalidInput naming the first bad one (the admin form shows it)."""
    fields = dict(fields)
    if "interface" in fields:
        fields["interface"] = _clean_interface(fields["interface"])
    if "gateway_netns" in fields:
        fields["gateway_netns"] = _clean_netns(fields["gateway_netns"])
    if "default_keepalive" in fields:
        fields["default_keepalive"] = _clean_keepalive(fields["default_keepalive"], network.default_keepalive)
    if "listen_port" in fields and not (
        isinstance(fields["listen_port"], int) and 1 <= fields["listen_port"] <= 65535
    ):
        raise InvalidInput("A UDP port, 1 to 65535.", field="listen_port", code="out_of_range")
    if "name" in fields and MeshNetwork.objects.filter(name=fields["name"]).exclude(pk=network.pk).exists():
        raise Conflict(f"Another network is named '{fields['name']}'.", field="name", code="duplicate_name")
    return fields


@transaction.atomic
def network_update(*, actor: User | None, network_id: int, **fields) -> MeshNetwork:
    """Change a network's settings. The pools are not among them: peers hold
    addresses from them."""
    _require_operator(actor, "manage networks")
    unknown = set(fields) - NETWORK_EDITABLE
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInput(f"'{field}' cannot be changed here.", field=field, code="not_editable")
    network = MeshNetwork.objects.select_for_update().filter(pk=network_id).first()
    if network is None:
        raise NotFound("No such network.", field="network")
    fields = validate_network_update(network, fields)
    changes = {
        field: [getattr(network, field), value] for field, value in fields.items() if getattr(network, field) != value
    }
    if not changes:
        return network
    for field, (_, value) in changes.items():
        setattr(network, field, value)
    network.full_clean()
    network.save(update_fields=list(changes))
    ledger.record(
        kind="mesh.network.updated", actor=ledger.actor_label(actor), subject=f"mesh_network:{network.pk}",
        payload={"changes": changes},
    )
    network_bump(network)
    return network


def _rule_prefix(value, network: MeshNetwork, *, field: str) -> str:
    if value in (None, ""):
        return ""
    try:
        prefix = ipaddress.ip_network(value, strict=False)
    except (ValueError, TypeError):
        raise InvalidInput(f"'{value}' is not an IP prefix.", field=field, code="invalid") from None
    if not prefix.subnet_of(ipam.pool(network, prefix.version)):
        raise InvalidInput(
            f"{prefix} is outside the network ({network.ipv4_cidr}, {network.ipv6_prefix}).",
            field=field, code="outside_network",
        )
    return str(prefix)


def validate_network_rule(network: MeshNetwork, *, source, destination) -> tuple[str, str]:
    """Both ends as normalised prefixes ('' for any), or InvalidInput naming the bad one."""
    source = _rule_prefix(source, network, field="source")
    destination = _rule_prefix(destination, network, field="destination")
    if source and destination and ipaddress.ip_network(source).version != ipaddress.ip_network(destination).version:
        raise InvalidInput("Source and destination must be of one IP version.", field="destination", code="wrong_family")
    return source, destination


@transaction.atomic
def network_rule_create(
    *, actor: User | None, network_id: int, source: str = "", destination: str = "", description: str = ""
) -> NetworkRule:
    """Allow traffic between peers of a network beyond what owners and
    shares allow; both ends blank lets every peer reach every other."""
    _require_operator(actor, "set network rules")
    network = MeshNetwork.objects.filter(pk=network_id).first()
    if network is None:
        raise NotFound("No such network.", field="network")
    source, destination = validate_network_rule(network, source=source, destination=destination)
    description = clean_name(description, field="description", max_length=120, required=False)
    rule = NetworkRule(network=network, source=source, destination=destination, description=description,
                       created_by=actor)
    rule.full_clean()
    rule.save()
    ledger.record(
        kind="mesh.network.rule_added", actor=ledger.actor_label(actor), subject=f"mesh_network:{network.pk}",
        payload={"rule": rule.pk, "source": source or "any", "destination": destination or "any"},
    )
    network_bump(network)
    return rule


@transaction.atomic
def network_rule_delete(*, actor: User | None, rule_id: int) -> None:
    _require_operator(actor, "set network rules")
    rule = NetworkRule.objects.select_related("network").filter(pk=rule_id).first()
    if rule is None:
        raise NotFound("No such rule.", field="rule")
    ledger.record(
        kind="mesh.network.rule_removed", actor=ledger.actor_label(actor), subject=f"mesh_network:{rule.network_id}",
        payload={"rule": rule.pk, "source": rule.source or "any", "destination": rule.destination or "any"},
    )
    rule.delete()
    network_bump(rule.network)


@transaction.atomic
def network_rotate_gateway_key(*, actor: User, network_id: int) -> MeshNetwork:
    """New gateway key pair. Every peer must then fetch its config again."""
    _require_operator(actor, "rotate gateway keys")
    network = MeshNetwork.objects.select_for_update().get(pk=network_id)
    private_key, public_key = keys.generate_keypair()
    network.gateway_public_key = public_key
    network.gateway_private_key_sealed = seal(private_key.encode())
    network.save(update_fields=["gateway_public_key", "gateway_private_key_sealed"])
    ledger.record(
        kind="mesh.gateway.key_rotated",
        actor=ledger.actor_label(actor),
        subject=f"mesh_network:{network.pk}",
        payload={"gateway_public_key": public_key},
    )
    network_bump(network)
    return network


@transaction.atomic
def address_reserve(*, actor: User, network_id: int, address: str, note: str = "") -> AddressLease:
    network = MeshNetwork.objects.get(pk=network_id)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise InvalidInput(f"'{address}' is not an IP address.", field="address", code="invalid") from None
    if ip not in ipam.pool(network, ip.version) or ip == ipam.gateway_address(network, ip.version):
        raise InvalidInput(f"{ip} is not a peer address of {network.name}.", field="address", code="outside_pool")
    lease, _ = AddressLease.objects.get_or_create(network=network, address=str(ip))
    if lease.peer_id is not None:
        raise Conflict(f"{ip} is in use by a peer.", field="address", code="in_use")
    lease.reserved, lease.note = True, note[:120]
    lease.save(update_fields=["reserved", "note"])
    ledger.record(
        kind="mesh.address.reserved", actor=ledger.actor_label(actor),
        subject=f"mesh_network:{network.pk}", payload={"address": str(ip), "note": note[:120]},
    )
    return lease


# --- Peers ------------------------------------------------------------------------------


def _clean_public_key(public_key) -> str:
    try:
        return keys.normalize_public_key(public_key)
    except keys.InvalidKey as exc:
        raise InvalidInput(str(exc), field="public_key", code="invalid_key") from None


def _clean_keepalive(keepalive, default: int) -> int:
    if keepalive is None:
        return default
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 0 <= keepalive <= MAX_KEEPALIVE:
        raise InvalidInput(
            f"Keepalive is 0 (off) to {MAX_KEEPALIVE} seconds.", field="keepalive", code="out_of_range"
        )
    return keepalive


def _clean_allowed_ips(allowed_ips, network: MeshNetwork) -> list[str]:
    pools = [ipaddress.ip_network(network.ipv4_cidr), ipaddress.ip_network(network.ipv6_prefix)]
    if allowed_ips is None:
        return [str(p) for p in pools]
    if not isinstance(allowed_ips, list) or not allowed_ips:
        raise InvalidInput("A non-empty list of prefixes.", field="allowed_ips", code="invalid")
    cleaned = []
    for item in allowed_ips:
        try:
            prefix = ipaddress.ip_network(item, strict=False)
        except (ValueError, TypeError):
            raise InvalidInput(f"'{item}' is not an IP prefix.", field="allowed_ips", code="invalid") from None
        if not any(prefix.version == p.version and prefix.subnet_of(p) for p in pools):
            raise InvalidInput(
                f"{prefix} is outside the network ({network.ipv4_cidr}, {network.ipv6_prefix}).",
                field="allowed_ips",
                code="outside_network",
            )
        cleaned.append(str(prefix))
    return cleaned


def _clean_expiry(expires_at: datetime | None, now: datetime) -> datetime | None:
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("The expiry must be in the future.", field="expires_at", code="in_past")
    return expires_at


def _key_or_generate(public_key, generate_key: bool) -> tuple[str, str | None]:
    if generate_key and public_key:
        raise InvalidInput("Send a public key or ask for a generated one, not both.", field="public_key", code="ambiguous")
    if generate_key:
        private, public = keys.generate_keypair()
        return public, private
    if not public_key:
        raise InvalidInput(
            "Send your public key (`wg pubkey`), or set generate_key to get a key pair shown once.",
            field="public_key",
            code="required",
        )
    return _clean_public_key(public_key), None


class CreatedPeer:
    """A peer plus the secrets shown once: a generated private key, a new preshared key."""

    def __init__(self, peer: Peer, private_key: str | None, preshared_key: str | None):
        self.peer, self.private_key, self.preshared_key = peer, private_key, preshared_key


@transaction.atomic
def peer_create(
    *,
    actor: User,
    name: str,
    public_key: str | None = None,
    generate_key: bool = False,
    preshared_key: bool = False,
    allowed_ips: list[str] | None = None,
    keepalive: int | None = None,
    expires_at: datetime | None = None,
    network: MeshNetwork | None = None,
) -> CreatedPeer:
    now = timezone.now()
    network = network or network_ensure_default()
    name = clean_name(name, field="name", max_length=PEER_NAME_MAX)
    public, private = _key_or_generate(public_key, generate_key)
    keepalive = _clean_keepalive(keepalive, network.default_keepalive)
    allowed = _clean_allowed_ips(allowed_ips, network)
    expires_at = _clean_expiry(expires_at, now)
    # The owner's row is the lock that makes the quota hold under parallel requests.
    User.objects.select_for_update().get(pk=actor.pk)
    active = Peer.objects.filter(network=network, owner=actor, status=Peer.Status.ACTIVE)
    if active.count() >= network.peer_quota:
        raise Conflict(f"You have reached your quota of {network.peer_quota} peers.", field="name", code="quota")
    if active.filter(name=name).exists():
        raise Conflict(f"You already have a peer named '{name}'.", field="name", code="duplicate_name")
    if Peer.objects.filter(network=network, public_key=public, status=Peer.Status.ACTIVE).exists():
        raise Conflict("That public key is already in use.", field="public_key", code="key_in_use")
    psk = keys.generate_preshared_key() if preshared_key else None
    try:
        with transaction.atomic():
            peer = Peer.objects.create(
                network=network, owner=actor, name=name, public_key=public, key_generated_by_server=generate_key,
                preshared_key_sealed=seal(psk.encode()) if psk else "", ipv4="0.0.0.0", ipv6="::",
                allowed_ips=allowed, keepalive=keepalive, expires_at=expires_at,
            )
    except IntegrityError:
        # Another request registered the same key a moment ago (the checks
        # above ran before it committed); the unique constraint decided.
        raise Conflict("That public key is already in use.", field="public_key", code="key_in_use") from None
    try:
        peer.ipv4 = ipam.allocate(network, 4, peer, now=now)
        peer.ipv6 = ipam.allocate(network, 6, peer, now=now)
    except ipam.PoolExhausted as exc:
        raise Conflict(str(exc), field="network", code="pool_exhausted") from None
    peer.save(update_fields=["ipv4", "ipv6"])
    ledger.record(
        kind="mesh.peer.created", actor=ledger.actor_label(actor), subject=f"mesh_peer:{peer.pk}",
        payload={"public_key": public, "ipv4": peer.ipv4, "ipv6": peer.ipv6, "generated": generate_key},
    )
    network_bump(network)
    if expires_at:
        # Expire at the exact moment; the periodic sweep is the safety net.
        enqueue_on_commit("mesh.tasks.expire_peer", (peer.pk,), eta=expires_at, queue=network.gateway_queue)
    _push(peer)
    return CreatedPeer(peer, private, psk)


def _own_peer(actor: User, peer_id, *, lock: bool = False) -> Peer:
    scope = Peer.objects.visible_to(actor)
    if lock:
        scope = scope.select_for_update()
    peer = scope.select_related("network").filter(pk=peer_id).first()
    if peer is None:
        raise NotFound("No such peer.")
    return peer


@transaction.atomic
def peer_rotate(*, actor: User, peer_id: int, public_key: str | None = None, generate_key: bool = False) -> CreatedPeer:
    """Swap the peer's key. The gateway takes the new key and drops the old
    one in the same `wg syncconf`, so the old key stops working at once."""
    peer = _own_peer(actor, peer_id, lock=True)
    if peer.status != Peer.Status.ACTIVE:
        raise Conflict(f"This peer is {peer.status}.", field="peer", code=peer.status)
    public, private = _key_or_generate(public_key, generate_key)
    if public == peer.public_key:
        raise InvalidInput("The new key is the current key.", field="public_key", code="unchanged")
    if Peer.objects.filter(network=peer.network, public_key=public, status=Peer.Status.ACTIVE).exists():
        raise Conflict("That public key is already in use.", field="public_key", code="key_in_use")
    old = peer.public_key
    peer.public_key, peer.key_epoch = public, peer.key_epoch + 1
    peer.key_generated_by_server, peer.rotated_at = generate_key, timezone.now()
    peer.save(update_fields=["public_key", "key_epoch", "key_generated_by_server", "rotated_at"])
    ledger.record(
        kind="mesh.peer.key_rotated", actor=ledger.actor_label(actor), subject=f"mesh_peer:{peer.pk}",
        payload={"epoch": peer.key_epoch, "old_public_key": old, "public_key": public},
    )
    network_bump(peer.network)
    _push(peer)
    psk = unseal(peer.preshared_key_sealed).decode() if peer.preshared_key_sealed else None
    return CreatedPeer(peer, private, psk if private else None)


def _end(peer: Peer, *, status: str, actor: User | None, now: datetime) -> None:
    peer.status = status
    peer.revoked_at = now
    peer.save(update_fields=["status", "revoked_at"])
    ipam.release(peer, now=now)
    ledger.record(
        kind=f"mesh.peer.{status}", actor=ledger.actor_label(actor), subject=f"mesh_peer:{peer.pk}",
        payload={"public_key": peer.public_key, "ipv4": peer.ipv4, "ipv6": peer.ipv6},
    )
    network_bump(peer.network)
    _push(peer)


@transaction.atomic
def peer_revoke(*, actor: User, peer_id: int) -> Peer:
    peer = _own_peer(actor, peer_id, lock=True)
    if peer.status == Peer.Status.ACTIVE:
        _end(peer, status=Peer.Status.REVOKED, actor=actor, now=timezone.now())
    return peer


@transaction.atomic
def peers_expire_due(*, now: datetime | None = None, peer_id: int | None = None) -> int:
    now = now or timezone.now()
    due = Peer.objects.select_for_update().select_related("network").filter(
        status=Peer.Status.ACTIVE, expires_at__lte=now
    )
    if peer_id is not None:
        due = due.filter(pk=peer_id)
    count = 0
    for peer in due:
        _end(peer, status=Peer.Status.EXPIRED, actor=None, now=now)
        count += 1
    return count


def peer_expiring_later(*, peer_id: int) -> Peer | None:
    """The peer, if it is still active and its expiry is still ahead."""
    return (
        Peer.objects.select_related("network")
        .filter(pk=peer_id, status=Peer.Status.ACTIVE, expires_at__gt=timezone.now())
        .first()
    )


def peer_config(*, actor: User, peer_id: int, private_key: str | None = None) -> str:
    peer = _own_peer(actor, peer_id)
    if peer.status != Peer.Status.ACTIVE:
        raise Conflict(f"This peer is {peer.status}; it has no working config.", field="peer", code=peer.status)
    return render_peer_config(peer, private_key=private_key)


def render_peer_config(peer: Peer, *, private_key: str | None, endpoint: str | None = None) -> str:
    """`endpoint` overrides the network's where the peer reaches the gateway
    another way (an appliance's guest, through its host's NAT)."""
    network = peer.network
    return wgconf.peer_config(
        name=peer.name,
        private_key=private_key,
        ipv4=peer.ipv4,
        ipv6=peer.ipv6,
        gateway_public_key=network.gateway_public_key,
        preshared_key=unseal(peer.preshared_key_sealed).decode() if peer.preshared_key_sealed else None,
        endpoint=endpoint or network.endpoint,
        allowed_ips=peer.allowed_ips,
        keepalive=peer.keepalive,
    )


# --- Shares ------------------------------------------------------------------------------


def _grantee(handle) -> User:
    if not isinstance(handle, str) or not handle.strip():
        raise InvalidInput("The handle of the person to share with.", field="handle", code="required")
    identity = Identity.objects.select_related("user").filter(handle__iexact=normalize_handle(handle)).first()
    if identity is None:
        raise NotFound(f"Nobody has the handle '{handle.strip()}'.", field="handle")
    return identity.user


def peer_shares(*, actor: User, peer_id: int):
    return PeerShare.objects.filter(peer=_own_peer(actor, peer_id)).select_related("grantee__identity")


@transaction.atomic
def peer_share_create(*, actor: User, peer_id: int, handle: str) -> PeerShare:
    """Let the peers of the user with `handle` reach this peer."""
    peer = _own_peer(actor, peer_id, lock=True)
    grantee = _grantee(handle)
    if grantee.pk == peer.owner_id:
        raise InvalidInput("The owner's own peers reach this peer already.", field="handle", code="owner")
    if peer.status != Peer.Status.ACTIVE:
        raise Conflict(f"This peer is {peer.status}.", field="peer", code=peer.status)
    if PeerShare.objects.filter(peer=peer, grantee=grantee).exists():
        raise Conflict(f"Already shared with {grantee.identity.handle}.", field="handle", code="already_shared")
    share = PeerShare.objects.create(peer=peer, grantee=grantee, created_by=actor)
    ledger.record(
        kind="mesh.peer.shared", actor=ledger.actor_label(actor), subject=f"mesh_peer:{peer.pk}",
        payload={"grantee": grantee.pk, "handle": grantee.identity.handle},
    )
    network_bump(peer.network)
    return share


@transaction.atomic
def peer_share_delete(*, actor: User, peer_id: int, handle: str) -> None:
    peer = _own_peer(actor, peer_id, lock=True)
    grantee = _grantee(handle)
    deleted, _ = PeerShare.objects.filter(peer=peer, grantee=grantee).delete()
    if not deleted:
        raise NotFound(f"This peer is not shared with {grantee.identity.handle}.", field="handle")
    ledger.record(
        kind="mesh.peer.unshared", actor=ledger.actor_label(actor), subject=f"mesh_peer:{peer.pk}",
        payload={"grantee": grantee.pk, "handle": grantee.identity.handle},
    )
    network_bump(peer.network)


def _push(peer: Peer) -> None:
    publish_to_user(peer.owner_id, kind="mesh.peer.changed", data={"id": peer.pk, "status": peer.status})


# --- Gateway sync -----------------------------------------------------------------------


def render_gateway_config(network: MeshNetwork) -> str:
    rows = Peer.objects.filter(network=network, status=Peer.Status.ACTIVE).order_by("pk").values_list(
        "public_key", "preshared_key_sealed", "ipv4", "ipv6"
    )
    return wgconf.gateway_config(
        private_key=unseal(network.gateway_private_key_sealed).decode(),
        listen_port=network.listen_port,
        peers=(
            wgconf.GatewayPeer(key, unseal(psk).decode() if psk else None, v4, v6) for key, psk, v4, v6 in rows
        ),
    )


def render_gateway_policy(network: MeshNetwork) -> str:
    """The nft table that isolates the network's owners from each other."""
    peers = list(
        Peer.objects.filter(network=network, status=Peer.Status.ACTIVE).order_by("pk").values_list(
            "pk", "owner_id", "ipv4", "ipv6"
        )
    )
    sources: dict[int, list[str]] = {}
    reachable: dict[int, list[str]] = {}
    by_pk = {}
    for pk, owner, v4, v6 in peers:
        sources.setdefault(owner, []).extend((v4, v6))
        reachable.setdefault(owner, []).extend((v4, v6))
        by_pk[pk] = (v4, v6)
    shares = PeerShare.objects.filter(peer__network=network, peer__status=Peer.Status.ACTIVE).order_by("pk")
    for peer_id, grantee in shares.values_list("peer_id", "grantee_id"):
        if grantee in sources:  # a grantee without peers here has nothing to send from
            reachable[grantee].extend(by_pk[peer_id])
    rules = [
        policy.Rule(source or None, destination or None)
        for source, destination in network.rules.order_by("pk").values_list("source", "destination")
    ]
    return policy.ruleset(
        interface=network.interface,
        reach=(policy.Reach(owner, sources[owner], reachable[owner]) for owner in sources),
        rules=rules,
    )


def gateway_config_read(*, actor: User, network_id: int) -> str:
    """The gateway's full config, private key included; every read is recorded."""
    _require_operator(actor, "read the gateway config")
    network = MeshNetwork.objects.filter(pk=network_id).first()
    if network is None:
        raise NotFound("No such network.", field="network")
    ledger.record(
        kind="mesh.gateway.config_read", actor=ledger.actor_label(actor), subject=f"mesh_network:{network.pk}",
        payload={},
    )
    return render_gateway_config(network)


# A gateway that cannot be reached (wireguard-go restarting, the host
# rebooting) is tried again after 1, 2, 4, 8 and 16 s, then left to the
# periodic resync; last_sync_error says why meanwhile.
GATEWAY_SYNC_ATTEMPTS = 6


def gateway_sync_or_retry(*, network_id: int, force: bool = False, attempt: int = 1) -> MeshNetwork | None:
    """The worker's sync: on a gateway error, queue the next attempt."""
    try:
        return gateway_sync(network_id=network_id, force=force)
    except gateway.GatewayError:
        queue = MeshNetwork.objects.filter(pk=network_id).values_list("gateway_queue", flat=True).first()
        retry_later(
            "mesh.tasks.sync_gateway", (network_id,), {"force": force}, attempt=attempt,
            base=1, cap=30, max_attempts=GATEWAY_SYNC_ATTEMPTS, queue=queue,
        )
        return None


def gateway_sync(*, network_id: int, force: bool = False) -> MeshNetwork | None:
    """Apply the database's view of the network to the gateway interface and
    its nft policy. Safe to run at any time and any number of times. A sync
    that finds the current generation already applied returns at once (a
    burst of changes costs one apply, not one per change); `force`
    re-applies anyway, which is how the periodic run repairs drift made
    outside InfraSim (peers or nft rules changed by hand)."""
    network = MeshNetwork.objects.filter(pk=network_id).first()
    if network is None:
        return None
    # Read, render and apply under the interface's lock, so that syncs reach
    # the gateway in the order they read the database. Without it a sync that
    # rendered before a revoke could apply after the revoke's own sync, and
    # put the revoked key back while applied_generation claimed otherwise.
    with gateway.exclusive(network.interface):
        network.refresh_from_db()
        generation = network.generation
        if not force and network.applied_generation >= generation and not network.last_sync_error:
            return network
        config = render_gateway_config(network)
        ruleset = render_gateway_policy(network)
        try:
            # `wg syncconf` first: it is what fails when the interface does
            # not exist, so no policy table is left for an absent gateway. A
            # peer that `wg` admits before its rules land is not let through:
            # the table drops what it does not allow.
            gateway.apply(network.interface, config, netns=network.gateway_netns)
            gateway.apply_policy(ruleset, netns=network.gateway_netns)
        except gateway.GatewayError as exc:
            MeshNetwork.objects.filter(pk=network.pk).update(last_sync_error=str(exc)[:2000])
            log.warning("gateway sync of %s failed: %s", network.name, exc)
            raise
        # Only move forward: the record of a newer generation stays.
        MeshNetwork.objects.filter(pk=network.pk, applied_generation__lt=generation).update(
            applied_generation=generation, applied_at=timezone.now(), last_sync_error=""
        )
    network.refresh_from_db()
    return network


def gateway_collect_stats(*, network_id: int) -> int:
    """Copy handshakes and transfer counters from the gateway to the peers."""
    network = MeshNetwork.objects.filter(pk=network_id).first()
    if network is None:
        return 0
    by_key = {s.public_key: s for s in gateway.stats(network.interface, netns=network.gateway_netns)}
    updated = 0
    for peer in Peer.objects.filter(network=network, status=Peer.Status.ACTIVE, public_key__in=list(by_key)):
        stat = by_key[peer.public_key]
        if (peer.last_handshake_at, peer.rx_bytes, peer.tx_bytes) != (stat.last_handshake, stat.rx_bytes, stat.tx_bytes):
            Peer.objects.filter(pk=peer.pk).update(
                last_handshake_at=stat.last_handshake, rx_bytes=stat.rx_bytes, tx_bytes=stat.tx_bytes
            )
            # The owner's open console shows handshakes and traffic as they happen.
            _push(peer)
            updated += 1
    return updated


def endpoint_is_loopback(endpoint: str) -> bool:
    """Whether a config with this Endpoint dials the device itself: such a
    config works only on the gateway's own host, so the console warns."""
    host = (endpoint.rpartition(":")[0] or endpoint).strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gateway_remove_policy(*, network_id: int) -> None:
    """Drop the network's nft table (its gateway interface is going away)."""
    network = MeshNetwork.objects.filter(pk=network_id).first()
    if network is None:
        return
    with gateway.exclusive(network.interface):
        gateway.apply_policy(policy.removal(network.interface), netns=network.gateway_netns)
