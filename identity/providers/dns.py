"""handle.BASE_DOMAIN as an RFC 2136 dynamic update signed with TSIG.

Every name InfraSim creates gets a TXT ownership marker beside it, at
_infrasim.<handle> (beside, because a CNAME may not share its name with any
other record). Creation has the prerequisite "name must not exist", so a name
somebody else made is never touched; a re-run finds its own marker and counts
as done. Deletion has the prerequisite that the marker is still ours.
"""

from __future__ import annotations

import dataclasses

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from identity.providers.errors import PermanentProviderError, TransientProviderError


@dataclasses.dataclass(frozen=True)
class DnsSettings:
    base_domain: str
    server: str
    port: int
    zone: str
    tsig_name: str
    tsig_algorithm: str
    tsig_secret: str
    target_a: tuple[str, ...]
    target_aaaa: tuple[str, ...]
    target_cname: str
    ttl: int
    timeout: float = 5.0


class DnsProvider:
    kind = "dns"

    def __init__(self, config: DnsSettings):
        self.config = config
        self.keyring = dns.tsigkeyring.from_text({config.tsig_name: config.tsig_secret})
        self.zone = dns.name.from_text(config.zone)

    def fqdn(self, handle: str) -> dns.name.Name:
        return dns.name.from_text(f"{handle}.{self.config.base_domain}")

    def marker_name(self, handle: str) -> dns.name.Name:
        return dns.name.from_text(f"_infrasim.{handle}.{self.config.base_domain}")

    @staticmethod
    def owner_marker(identity) -> str:
        return f'"infrasim-owner={identity.user.account_id}"'

    def _send(self, message):
        try:
            response = dns.query.tcp(message, self.config.server, port=self.config.port, timeout=self.config.timeout)
        except dns.tsig.PeerError as exc:
            raise PermanentProviderError(f"DNS server rejected our TSIG key: {exc}") from exc
        except (dns.exception.Timeout, OSError, EOFError) as exc:
            raise TransientProviderError(
                f"DNS server {self.config.server}:{self.config.port} unreachable: {exc or type(exc).__name__}"
            ) from exc
        rcode = response.rcode()
        if rcode in (dns.rcode.NOTAUTH, dns.rcode.REFUSED):
            raise PermanentProviderError(f"DNS server refused the update ({dns.rcode.to_text(rcode)}): check the TSIG key")
        if rcode == dns.rcode.SERVFAIL:
            raise TransientProviderError("DNS server failed (SERVFAIL)")
        return response

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(
            self.zone, keyring=self.keyring, keyname=self.config.tsig_name, keyalgorithm=self.config.tsig_algorithm
        )

    def _records(self, name: dns.name.Name, rdtype) -> list[str]:
        response = self._send(dns.message.make_query(name, rdtype))
        return [rdata.to_text() for rrset in response.answer for rdata in rrset if rrset.rdtype == rdtype]

    def _owned_by(self, identity) -> bool:
        return self.owner_marker(identity) in self._records(self.marker_name(identity.handle), dns.rdatatype.TXT)

    def name_exists(self, handle: str) -> bool:
        query = dns.message.make_query(self.fqdn(handle), dns.rdatatype.ANY)
        response = self._send(query)
        return response.rcode() == dns.rcode.NOERROR and bool(response.answer)

    def is_available(self, handle: str) -> bool:
        return not self.name_exists(handle)

    def provision(self, identity) -> str:
        name = self.fqdn(identity.handle)
        update = self._update()
        update.absent(name)
        ttl = self.config.ttl
        update.add(self.marker_name(identity.handle), ttl, "TXT", self.owner_marker(identity))
        if self.config.target_cname:
            update.add(name, ttl, "CNAME", self.config.target_cname)
        for address in self.config.target_a:
            update.add(name, ttl, "A", address)
        for address in self.config.target_aaaa:
            update.add(name, ttl, "AAAA", address)
        response = self._send(update)
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return f"created {name}"
        if rcode == dns.rcode.YXDOMAIN:
            if self._owned_by(identity):
                return f"{name} already ours"
            raise PermanentProviderError(f"{name.to_text(omit_final_dot=True)} already exists and is not ours")
        raise PermanentProviderError(f"DNS update for {name} failed: {dns.rcode.to_text(rcode)}")

    def deprovision(self, identity) -> str:
        name = self.fqdn(identity.handle)
        update = self._update()
        marker = self.marker_name(identity.handle)
        update.present(marker, "TXT", self.owner_marker(identity))
        update.delete(name)
        update.delete(marker)
        rcode = self._send(update).rcode()
        if rcode == dns.rcode.NOERROR:
            return f"deleted {name}"
        if rcode in (dns.rcode.NXDOMAIN, dns.rcode.NXRRSET):
            return f"{name} was not ours or already gone"
        raise PermanentProviderError(f"DNS delete for {name} failed: {dns.rcode.to_text(rcode)}")
