"""FORENSICS_COPY_TO_S3: a finished capture is also copied to the
requester's own bucket, through the provisioning providers, on a real S3
server on loopback. The local copy stays the one served and verified, and a
failed copy is shown on the capture without undoing it."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from forensics import jobs, services
from forensics.models import Acquisition
from identity.providers import provider_for
from tests.forensics.acquisitions import a_running_appliance, finish
from tests.people import person

pytestmark = pytest.mark.django_db


def an_operator(s3, settings):
    """A fresh handle each time: the S3 server lives for the whole session."""
    for key, value in s3.settings().items():
        setattr(settings, key, value)
    return person(f"olga{secrets.token_hex(4)}", operator=True)


def request(requester) -> Acquisition:
    appliance = a_running_appliance(person("owner"))
    return services.acquisition_request(actor=requester, appliance_id=appliance.pk, case_ref="INC-S3",
                                        reason="off-host copy")


def test_a_finished_capture_is_copied_to_the_requesters_bucket(s3, settings):
    settings.FORENSICS_COPY_TO_S3 = True
    olga = an_operator(s3, settings)
    provider_for("s3").provision(olga.identity)
    acquisition = finish(request(olga), body=b"memory " * 4096)
    jobs._copy_to_bucket(acquisition)
    acquisition.refresh_from_db()
    bucket = provider_for("s3").bucket(olga.identity.handle)
    assert acquisition.s3_location == f"s3://{bucket}/forensics/{acquisition.evidence_name}"
    stored = s3.client().get_object(Bucket=bucket, Key=f"forensics/{acquisition.evidence_name}")
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == acquisition.sha256
    assert stored["Metadata"]["sha256"] == acquisition.sha256 and stored["Metadata"]["case-ref"] == "INC-S3"


def test_a_failed_copy_is_shown_and_the_capture_stays_complete(s3, settings):
    settings.FORENSICS_COPY_TO_S3 = True
    olga = an_operator(s3, settings)  # no bucket was ever made for her
    acquisition = finish(request(olga))
    jobs._copy_to_bucket(acquisition)
    acquisition.refresh_from_db()
    assert acquisition.status == "complete"
    assert acquisition.s3_location.startswith("not copied: ") and olga.identity.handle in acquisition.s3_location


def test_without_the_setting_nothing_leaves_the_host(s3, settings):
    olga = an_operator(s3, settings)
    provider_for("s3").provision(olga.identity)
    acquisition = finish(request(olga))
    jobs._copy_to_bucket(acquisition)
    acquisition.refresh_from_db()
    assert acquisition.s3_location == ""
    listing = s3.client().list_objects_v2(Bucket=provider_for("s3").bucket(olga.identity.handle))
    assert listing.get("KeyCount", 0) == 0
