import asyncio
import json
import time

import websockets
from django.test import Client

from identity.models import Identity, ProvisioningStep, User
from identity.provisioning import identity_claim, identity_provision_step, identity_start_provisioning


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_claiming_provisions_on_the_worker_and_reports_unconfigured_providers_honestly(live, worker):
    user = User.objects.create_user(display_name="Dora", signup_state="active")
    client = Client()
    client.force_login(user, backend="django_otp_webauthn.backends.WebAuthnBackend")
    headers = {"Cookie": f"sessionid={client.cookies['sessionid'].value}", "Origin": live.url}

    async def watch_events():
        async with websockets.connect(f"{live.ws_url}/ws/events/", additional_headers=headers) as socket:
            assert json.loads(await socket.recv())["kind"] == "hello"
            await asyncio.to_thread(identity_claim, actor=user, handle="dora")
            seen = []
            while not seen or seen[-1]["status"] not in {"active", "incomplete", "failed"}:
                event = json.loads(await asyncio.wait_for(socket.recv(), 20))
                assert event["kind"] == "identity.changed"
                seen.append(event["data"])
            return seen

    events = asyncio.run(watch_events())
    assert events[0]["status"] == "pending"
    final = events[-1]
    assert final["status"] == "incomplete"
    assert {step["kind"]: step["status"] for step in final["steps"]} == {
        "dns": "not_configured", "matrix": "not_configured", "s3": "not_configured"
    }
    identity = Identity.objects.get(user=user)
    assert identity.status == Identity.Status.INCOMPLETE
    assert set(identity.steps.values_list("status", flat=True)) == {ProvisioningStep.Status.NOT_CONFIGURED}


def test_a_redelivered_step_task_does_not_redo_finished_work(db):
    user = User.objects.create_user(display_name="Eve", signup_state="active")
    identity_claim(actor=user, handle="evelyn")
    identity = identity_start_provisioning(actor=user)
    steps = list(identity.steps.all())
    for step in steps:
        identity_provision_step(step_id=step.pk)
    attempts = dict(identity.steps.values_list("kind", "attempts"))
    for step in steps:
        identity_provision_step(step_id=step.pk)
    assert dict(identity.steps.values_list("kind", "attempts")) == attempts == {"dns": 1, "matrix": 1, "s3": 1}


def test_a_task_for_a_deleted_step_returns_quietly(db):
    assert identity_provision_step(step_id=987654) is None


def test_cancelling_waits_for_a_step_still_in_flight(db):
    from identity.models import Identity
    from identity.provisioning import identity_cancel, identity_deprovision

    user = User.objects.create_user(display_name="Flo Flight", signup_state="active")
    identity_claim(actor=user, handle="in-flight")
    identity = identity_start_provisioning(actor=user)
    ProvisioningStep.objects.filter(identity=identity, kind="dns").update(status=ProvisioningStep.Status.RUNNING)
    identity_cancel(actor=user)
    assert identity_deprovision(identity_id=identity.pk) is not None, "asks to be run again later"
    assert Identity.objects.filter(pk=identity.pk).exists()
    ProvisioningStep.objects.filter(identity=identity).update(status=ProvisioningStep.Status.NOT_CONFIGURED)
    assert identity_deprovision(identity_id=identity.pk, attempt=2) is None
    assert not Identity.objects.filter(pk=identity.pk).exists()


def test_a_step_task_arriving_after_a_cancel_does_not_start(db):
    from identity.provisioning import identity_cancel

    user = User.objects.create_user(display_name="Late Task", signup_state="active")
    identity_claim(actor=user, handle="late-task")
    identity = identity_start_provisioning(actor=user)
    identity_cancel(actor=user)
    step = identity.steps.get(kind="dns")
    identity_provision_step(step_id=step.pk)
    step.refresh_from_db()
    assert step.status == ProvisioningStep.Status.PENDING and step.attempts == 0
