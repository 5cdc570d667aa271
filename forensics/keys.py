"""Attestation signing keys: one current Ed25519 key per person who acquires
evidence, made here, sealed at rest under the master key, rotated on demand.
Retired keys keep their public half published, so old bundles still verify."""

from __future__ import annotations

import nacl.signing
from django.db import IntegrityError, transaction
from django.utils import timezone

from forensics import ledger
from forensics.models import SigningKey
from forensics.offline_verify import key_id
from infrasim_site.sealing import seal, unseal


def handle_of(user) -> str:
    identity = getattr(user, "identity", None)
    return getattr(identity, "handle", "") or ""


def _create(user) -> SigningKey:
    private = nacl.signing.SigningKey.generate()
    public = bytes(private.verify_key)
    key = SigningKey.objects.create(
        user=user, handle=handle_of(user), key_id=key_id(public), public_key=public,
        sealed_private_key=seal(bytes(private)),
    )
    ledger.record(kind="forensics.signing_key.created", actor=ledger.actor_label(user),
                  subject=f"signing_key:{key.key_id}", payload={"user": user.pk, "key_id": key.key_id})
    return key


def current_key(user) -> SigningKey:
    """The user's current key, made on first use (a race makes one: the
    database allows one current key per user)."""
    found = SigningKey.objects.filter(user=user, retired_at__isnull=True).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            return _create(user)
    except IntegrityError:
        return SigningKey.objects.get(user=user, retired_at__isnull=True)


def signer(key: SigningKey) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(unseal(key.sealed_private_key))


@transaction.atomic
def signing_key_rotate(*, actor, user) -> SigningKey:
    """Retire `user`'s current key and make a new one. Operators rotate
    anyone's; a person their own."""
    retired = list(SigningKey.objects.select_for_update().filter(user=user, retired_at__isnull=True))
    SigningKey.objects.filter(pk__in=[key.pk for key in retired]).update(retired_at=timezone.now())
    key = _create(user)
    ledger.record(kind="forensics.signing_key.rotated", actor=ledger.actor_label(actor),
                  subject=f"signing_key:{key.key_id}", concerns=user.pk,
                  payload={"user": user.pk, "retired": [old.key_id for old in retired], "current": key.key_id})
    return key


def published_keys():
    """Every key ever used, current and retired: public halves only."""
    return SigningKey.objects.order_by("created_at", "pk")
