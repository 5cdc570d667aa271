"""Operators: `createoperator`, one-time enrollment links, recovery links."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django_otp_webauthn.models import WebAuthnCredential

from identity import services
from identity.models import OperatorEnrollment, User
from tests.passkey_api import API, authenticator, post_json, register_options, sign_in, sign_up

pytestmark = pytest.mark.django_db


from tests.passkey_api import assert_signed_out, signed_in_user


# --- Operators ------------------------------------------------------------------------------


def create_operator(name: str) -> str:
    out = io.StringIO()
    call_command("createoperator", name, stdout=out)
    match = re.search(r"(https?://\S+)/enroll/([^/\s]+)/", out.getvalue())
    assert match, out.getvalue()
    assert match.group(1) == settings.WEBAUTHN_RP_ORIGIN
    return match.group(2)


def test_an_operator_enrolls_through_the_one_time_link():
    token = create_operator("Olivia")
    operator = User.objects.get(display_name="Olivia")
    assert operator.is_staff and operator.signup_state == User.SignupState.AWAITING_PASSKEY

    client, device = Client(), authenticator()
    options = register_options(client, enrollment_token=token)
    assert options["user"]["displayName"] == "Olivia"
    response = post_json(client, f"{API}/auth/register/verify", device.create(options))
    assert response.status_code == 201, response.content
    me = client.get(f"{API}/me").json()
    assert me["user"]["is_operator"] is True
    assert me["user"]["account_id"] == str(operator.account_id)
    operator.refresh_from_db()
    assert operator.signup_state == User.SignupState.ACTIVE
    assert OperatorEnrollment.objects.get(user=operator).used_at is not None

    # The link works once.
    again = post_json(Client(), f"{API}/auth/register/options", {"enrollment_token": token})
    assert again.status_code == 403
    assert again.json()["code"] == "enrollment_invalid"

    # The operator signs in with the passkey like anybody else.
    fresh = Client()
    assert sign_in(fresh, device).status_code == 200
    assert signed_in_user(fresh)["is_operator"] is True


def test_an_enrollment_link_opened_while_signed_in_enrolls_its_own_account():
    client = Client()
    sign_up(client, authenticator(), display_name="Busy Admin")
    me_before = client.get(f"{API}/me").json()["user"]
    token = create_operator("Newcomer")
    newcomer = User.objects.get(display_name="Newcomer")

    device = authenticator()
    options = register_options(client, enrollment_token=token)
    assert options["user"]["displayName"] == "Newcomer"
    assert post_json(client, f"{API}/auth/register/verify", device.create(options)).status_code == 201
    assert client.get(f"{API}/me").json()["user"]["account_id"] == str(newcomer.account_id)
    assert WebAuthnCredential.objects.filter(user=newcomer).count() == 1
    assert WebAuthnCredential.objects.filter(user__account_id=me_before["account_id"]).count() == 1


def test_an_enrollment_link_cannot_be_completed_twice_in_parallel():
    token = create_operator("Otto")
    first, second = Client(), Client()
    first_options = register_options(first, enrollment_token=token)
    second_options = register_options(second, enrollment_token=token)
    assert post_json(first, f"{API}/auth/register/verify", authenticator().create(first_options)).status_code == 201
    response = post_json(second, f"{API}/auth/register/verify", authenticator().create(second_options))
    assert response.status_code == 403
    assert WebAuthnCredential.objects.count() == 1
    assert_signed_out(second)


def test_an_expired_enrollment_link_fails():
    token = create_operator("Oscar")
    OperatorEnrollment.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = post_json(Client(), f"{API}/auth/register/options", {"enrollment_token": token})
    assert response.status_code == 403
    assert response.json()["code"] == "enrollment_invalid"


def test_an_enrollment_link_that_expires_during_the_ceremony_fails():
    token = create_operator("Opal")
    client = Client()
    options = register_options(client, enrollment_token=token)
    OperatorEnrollment.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = post_json(client, f"{API}/auth/register/verify", authenticator().create(options))
    assert response.status_code == 403
    assert not WebAuthnCredential.objects.exists()
    assert_signed_out(client)


def test_a_wrong_enrollment_token_fails():
    create_operator("Orla")
    response = post_json(Client(), f"{API}/auth/register/options", {"enrollment_token": "not-the-token"})
    assert response.status_code == 403


def test_operators_are_purged_only_once_their_links_expired():
    create_operator("Pending operator")
    operator = User.objects.get(display_name="Pending operator")
    far_later = timezone.now() + timedelta(seconds=settings.SIGNUP_ABANDON_SECONDS + 1)
    assert services.purge_abandoned_signups(now=far_later) == 0
    after_expiry = timezone.now() + timedelta(seconds=settings.OPERATOR_ENROLLMENT_SECONDS + 1)
    assert services.purge_abandoned_signups(now=after_expiry) == 1
    assert not User.objects.filter(pk=operator.pk).exists()
