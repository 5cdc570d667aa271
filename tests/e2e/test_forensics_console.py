"""The Forensics card in Chromium: an operator asks for a capture (a missing
field is named beside it), follows a finished one, and co-signs its
attestation with the passkey in the virtual authenticator; the bundle then
carries an assertion that the offline verifier checks."""

from __future__ import annotations

import json

from playwright.sync_api import expect

from forensics import offline_verify
from tests.browser import Browser, orm_access
from tests.e2e.test_passkeys_in_chromium import sign_up


def test_capture_then_cosign_with_a_passkey(browser: Browser):
    page = browser.page
    sign_up(browser, "Olga Operator")
    with orm_access():
        from forensics.models import Acquisition
        from identity.models import User
        from tests.forensics.acquisitions import a_running_appliance, finish
        from tests.people import person

        olga = User.objects.get(display_name="Olga Operator")
        User.objects.filter(pk=olga.pk).update(is_staff=True, is_superuser=True)
        olga.refresh_from_db()
        appliance = a_running_appliance(person("owner"), name="suspect")
    page.goto("/")
    card = page.get_by_test_id("forensics-card")
    expect(card).to_be_visible()
    expect(card.get_by_test_id("no-acquisitions")).to_be_visible()

    # A missing reason is named beside its field, and nothing is asked for.
    card.get_by_test_id("capture-appliance").select_option(str(appliance.pk))
    card.get_by_test_id("capture-case-ref").fill("INC-9")
    card.get_by_test_id("capture-submit").click()
    expect(card.get_by_test_id("error-reason")).to_be_visible()
    expect(card.get_by_test_id("capture-reason")).to_have_attribute("aria-invalid", "true")
    card.get_by_test_id("capture-reason").fill("the owner reported a compromise")
    expect(card.get_by_test_id("error-reason")).to_be_hidden()
    card.get_by_test_id("capture-submit").click()
    expect(page.get_by_test_id("forensics-status")).to_contain_text("“INC-9”")
    row = page.get_by_test_id("acquisition")
    expect(row).to_have_count(1)
    expect(row.get_by_test_id("acquisition-status")).to_have_text("pending")

    # No worker serves this host: the test finishes the capture as the job's last step would.
    with orm_access():
        acquisition = finish(Acquisition.objects.get(case_ref="INC-9"))
    page.reload()
    row = page.get_by_test_id("acquisition")
    expect(row.get_by_test_id("acquisition-status")).to_have_text("complete")
    expect(row.get_by_test_id("acquisition-sha256")).to_have_text(acquisition.sha256)
    expect(row.get_by_test_id("download-bundle")).to_be_visible()

    row.get_by_test_id("cosign").click()
    expect(page.get_by_test_id("forensics-status")).to_contain_text("Co-signed")
    expect(page.get_by_test_id("acquisition-cosigned")).to_be_visible()
    expect(page.get_by_test_id("cosign")).to_have_count(0)

    bundle = json.loads(page.request.get(browser.url(f"/api/forensics/acquisitions/{acquisition.pk}/bundle")).text())
    cosignature = bundle["passkeyCosignature"]
    assert cosignature["origin"] == browser.url("").rstrip("/")
    assert cosignature["credentialId"] == browser.credentials()[0]["credentialId"].replace("+", "-").replace(
        "/", "_").rstrip("=")
    report = offline_verify.verify_bundle(bundle)
    assert report.cosigned is True
