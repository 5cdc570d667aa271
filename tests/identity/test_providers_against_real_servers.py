"""Each provisioning backend against its real server: Knot DNS, Synapse, S3."""

import dns.resolver
import pytest

from identity.models import Identity, User
from identity.providers.dns import DnsProvider, DnsSettings
from identity.providers.errors import PermanentProviderError, TransientProviderError
from identity.providers.matrix import MatrixProvider, MatrixSettings
from identity.providers.s3 import S3Provider, S3Settings
from identity.handles import skeleton


def make_identity(handle: str, name: str = "Test Person") -> Identity:
    user = User.objects.create_user(display_name=name, signup_state="active")
    return Identity.objects.create(user=user, handle=handle, handle_skeleton=skeleton(handle))


def dns_provider(knot, **overrides) -> DnsProvider:
    config = dict(
        base_domain="test.infrasim", server="127.0.0.1", port=knot.port, zone="test.infrasim",
        tsig_name=knot.key_name, tsig_algorithm="hmac-sha256", tsig_secret=knot.secret,
        target_a=("192.0.2.10",), target_aaaa=("2001:db8::10",), target_cname="", ttl=300, timeout=2.0,
    )
    config.update(overrides)
    return DnsProvider(DnsSettings(**config))


def resolver_for(knot) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = knot.port
    return resolver


# --- DNS ------------------------------------------------------------------------


def test_dns_record_is_created_and_resolves_from_the_server(db, knot):
    identity = make_identity("dnsalice")
    provider = dns_provider(knot)
    assert provider.is_available("dnsalice")
    provider.provision(identity)
    answer = resolver_for(knot).resolve("dnsalice.test.infrasim", "A")
    assert [r.to_text() for r in answer] == ["192.0.2.10"]
    assert [r.to_text() for r in resolver_for(knot).resolve("dnsalice.test.infrasim", "AAAA")] == ["2001:db8::10"]
    assert not provider.is_available("dnsalice")


def test_dns_can_point_a_handle_at_a_cname_target(db, knot):
    identity = make_identity("dnscname")
    dns_provider(knot, target_a=(), target_aaaa=(), target_cname="edge.test.infrasim.").provision(identity)
    assert knot.query("dnscname.test.infrasim", "CNAME") == ["edge.test.infrasim."]
    assert knot.query("_infrasim.dnscname.test.infrasim", "TXT"), "the ownership marker sits beside the CNAME"


def test_dns_provisioning_twice_is_harmless(db, knot):
    identity = make_identity("dnstwice")
    provider = dns_provider(knot)
    provider.provision(identity)
    provider.provision(identity)
    assert knot.query("dnstwice.test.infrasim", "A") == ["192.0.2.10"]


def test_dns_never_overwrites_a_name_somebody_else_created(db, knot):
    identity = make_identity("squatted")
    with pytest.raises(PermanentProviderError, match="already exists"):
        dns_provider(knot).provision(identity)
    assert knot.query("squatted.test.infrasim", "A") == ["198.51.100.7"]


def test_dns_with_a_wrong_tsig_key_fails_permanently(db, knot):
    identity = make_identity("badkey")
    with pytest.raises(PermanentProviderError, match="TSIG"):
        dns_provider(knot, tsig_secret="d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCB3cm9uZyE=").provision(identity)
    assert knot.query("badkey.test.infrasim", "A") == []


def test_dns_server_down_is_a_transient_error(db, knot):
    identity = make_identity("downtime")
    with pytest.raises(TransientProviderError, match="unreachable"):
        dns_provider(knot, port=1).provision(identity)


def test_dns_deprovision_removes_only_our_records(db, knot):
    identity = make_identity("dnsgone")
    provider = dns_provider(knot)
    provider.provision(identity)
    provider.deprovision(identity)
    assert knot.query("dnsgone.test.infrasim", "A") == []
    squatter = make_identity("squatted", name="Not the owner")
    provider.deprovision(squatter)
    assert knot.query("squatted.test.infrasim", "A") == ["198.51.100.7"]


# --- Matrix -----------------------------------------------------------------------


def matrix_provider(synapse, token=None) -> MatrixProvider:
    return MatrixProvider(
        MatrixSettings(homeserver_url=synapse.url, admin_token=token or synapse.admin_token, server_name=synapse.server_name)
    )


def test_matrix_user_is_created_with_display_name_and_found_through_the_admin_api(db, synapse):
    identity = make_identity("mxalice", name="Alice Liddell")
    provider = matrix_provider(synapse)
    assert provider.is_available("mxalice")
    provider.provision(identity)
    status, user = synapse.user(f"@mxalice:{synapse.server_name}")
    assert status == 200
    assert user["displayname"] == "Alice Liddell"
    assert not user["deactivated"]
    assert not provider.is_available("mxalice")
    provider.provision(identity)  # a re-run is harmless


def test_matrix_user_that_exists_already_is_not_taken_over(db, synapse):
    synapse.register_with_shared_secret("mxsquat", admin=False)
    identity = make_identity("mxsquat")
    with pytest.raises(PermanentProviderError, match="not ours"):
        matrix_provider(synapse).provision(identity)
    assert synapse.user(f"@mxsquat:{synapse.server_name}")[1]["deactivated"] is False


def test_matrix_refused_admin_token_fails_permanently(db, synapse):
    identity = make_identity("mxbadtoken")
    with pytest.raises(PermanentProviderError, match="admin token"):
        matrix_provider(synapse, token="syt_not_a_token").provision(identity)


def test_matrix_deprovision_deactivates_our_account(db, synapse):
    identity = make_identity("mxgone")
    provider = matrix_provider(synapse)
    provider.provision(identity)
    provider.deprovision(identity)
    assert synapse.user(f"@mxgone:{synapse.server_name}")[1]["deactivated"] is True


# --- S3 -----------------------------------------------------------------------------


def s3_provider(s3) -> S3Provider:
    return S3Provider(
        S3Settings(endpoint_url=s3.url, region="us-east-1", access_key=s3.access_key, secret_key=s3.secret_key,
                   bucket_prefix="infrasim-")
    )


def test_bucket_is_created_and_exists_on_the_server(db, s3):
    identity = make_identity("s3alice")
    provider = s3_provider(s3)
    assert provider.is_available("s3alice")
    provider.provision(identity)
    provider.provision(identity)
    names = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    assert names.count("infrasim-s3alice") == 1
    assert not provider.is_available("s3alice")


def test_bucket_owned_by_another_s3_account_is_a_clear_error(db, s3):
    s3.client(account_id="111111111111").create_bucket(Bucket="infrasim-s3foreign")
    with pytest.raises(PermanentProviderError, match="another S3 account"):
        s3_provider(s3).provision(make_identity("s3foreign"))


def test_bucket_of_another_infrasim_account_is_not_taken_over(db, s3):
    first = make_identity("s3shared")
    s3_provider(s3).provision(first)
    first.delete()
    with pytest.raises(PermanentProviderError, match="another InfraSim account"):
        s3_provider(s3).provision(make_identity("s3shared"))


def test_deprovision_removes_an_empty_bucket_and_keeps_a_full_one(db, s3):
    empty, full = make_identity("s3empty"), make_identity("s3full")
    provider = s3_provider(s3)
    provider.provision(empty)
    provider.provision(full)
    s3.client().put_object(Bucket="infrasim-s3full", Key="keep.txt", Body=b"data")
    assert "deleted" in provider.deprovision(empty)
    assert "not empty" in provider.deprovision(full)
    names = {b["Name"] for b in s3.client().list_buckets()["Buckets"]}
    assert "infrasim-s3empty" not in names and "infrasim-s3full" in names
