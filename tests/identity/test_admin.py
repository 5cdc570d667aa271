import re

from django.test import Client

from forensics import ledger
from forensics.models import LedgerEntry
from identity.models import Identity, ProvisioningStep, User
from identity.provisioning import identity_claim

BACKEND = "django_otp_webauthn.backends.WebAuthnBackend"


def test_admin_sign_in_goes_through_the_passkey_page(client):
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/signin/?next=%2Fadmin%2F"
    assert client.get("/admin/", follow=True).redirect_chain[-1][0].startswith("/signin/")


def test_no_admin_page_has_a_password_field(operator_client):
    user = User.objects.create_user(display_name="Uma", signup_state="active")
    for url in ["/admin/", f"/admin/identity/user/{user.pk}/change/", "/admin/identity/user/"]:
        html = operator_client.get(url).content.decode()
        assert not re.search(r'type="password"|name="password', html), url
    assert operator_client.get("/admin/identity/user/add/").status_code == 403
    assert operator_client.get("/admin/password_change/").status_code == 404


def test_a_user_who_is_not_an_operator_cannot_use_the_admin(db):
    user = User.objects.create_user(display_name="Uma", signup_state="active")
    client = Client()
    client.force_login(user, backend=BACKEND)
    response = client.get("/admin/", follow=True)
    assert response.redirect_chain[-1][0] == "/"
    assert "The admin is for operators." in response.content.decode()


def test_operator_retries_provisioning_from_the_admin(operator_client):
    user = User.objects.create_user(display_name="Rita", signup_state="active")
    identity = identity_claim(actor=user, handle="rita")
    identity.steps.update(status=ProvisioningStep.Status.FAILED, last_error="unreachable")
    Identity.objects.filter(pk=identity.pk).update(status=Identity.Status.FAILED)
    response = operator_client.post(
        "/admin/identity/identity/", {"action": "retry_provisioning", "_selected_action": [identity.pk]}, follow=True
    )
    assert response.status_code == 200
    identity.refresh_from_db()
    assert identity.status == Identity.Status.PENDING
    assert set(identity.steps.values_list("status", flat=True)) == {ProvisioningStep.Status.PENDING}
    requested = LedgerEntry.objects.filter(kind="identity.provisioning.requested", subject=f"identity:{identity.pk}")
    assert requested.count() == 2, "once on claiming, once more for the operator's retry"


def test_the_ledger_is_read_only_in_the_admin(operator_client):
    entry = ledger.record(kind="k", actor="system", subject="s")
    assert operator_client.get(f"/admin/forensics/ledgerentry/{entry.pk}/change/").status_code == 200
    assert operator_client.post(f"/admin/forensics/ledgerentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert LedgerEntry.objects.filter(pk=entry.pk).exists()


def test_operator_issues_a_recovery_enrollment_link(operator_client):
    from tests.people import signed_in_person

    user = User.objects.create_user(display_name="Lost Keys", signup_state="active")
    action = {"action": "issue_enrollment_link", "_selected_action": [user.pk]}
    # A session without a passkey check (here: none at all) gets no link.
    refused = operator_client.post("/admin/identity/user/", action, follow=True)
    assert "Confirm with your passkey first" in refused.content.decode()
    assert not LedgerEntry.objects.filter(kind="identity.enrollment.issued").exists()

    operator = signed_in_person("Olga Passkey", operator=True)
    response = operator.post("/admin/identity/user/", action)
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    link = re.search(r"http://localhost:\d+/enroll/([\w-]+)/", response.content.decode())
    assert link, "the link is shown to the operator"
    assert "enroll" not in str(response.cookies), "the link never rides in a cookie"
    assert Client().get(f"/enroll/{link.group(1)}/").status_code == 200
    assert LedgerEntry.objects.filter(kind="identity.enrollment.issued", subject=f"user:{user.pk}").exists()
