"""The standalone verifier (forensics/offline_verify.py) against real bundles:
Ed25519 keys from PyNaCl, envelopes and notes signed by forensics.signatures,
Merkle trees from forensics.merkle, passkey assertions from a software
authenticator, and securesystemslib's DSSE for interoperability."""

from __future__ import annotations

import ast
import base64
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cbor2
import nacl.signing
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from django.core.management import CommandError, call_command
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from forensics import offline_verify
from forensics.merkle import inclusion_proof, leaf_hash, merkle_root
from forensics.offline_verify import (
    BUNDLE_MEDIA_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    CborError,
    NoteError,
    VerificationFailed,
    cbor_decode,
    cose_verifier,
    parse_checkpoint,
    parse_vkey,
    verify_bundle,
    verify_es256,
    verify_note,
    verify_rs256,
)
from forensics.signatures import canonical_json, checkpoint_body, sign_envelope, sign_note
from tests.webauthn_authenticator import FLAG_UP, FLAG_UV, SoftAuthenticator, b64url, cose_es256_public_key

LOG_ORIGIN = "infrasim.test/forensics-log"
RP_ID = "localhost"
ORIGIN = "http://localhost:8000"
VERIFIER_SOURCE = Path(offline_verify.__file__)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def flip_b64(value: str, at: int) -> str:
    return b64(flipped(base64.b64decode(value), at))


@dataclass
class Evidence:
    bundle: dict
    dump: Path
    operator: nacl.signing.SigningKey
    log: nacl.signing.SigningKey

    @property
    def keyid(self) -> str:
        return offline_verify.key_id(bytes(self.operator.verify_key))

    @property
    def vkey(self) -> str:
        return offline_verify.format_vkey(LOG_ORIGIN, bytes(self.log.verify_key))

    def write(self, directory: Path, bundle: dict | None = None) -> Path:
        path = directory / "bundle.json"
        path.write_text(json.dumps(bundle or self.bundle))
        return path


def custody(dump: bytes, keyid: str) -> dict:
    return {
        "case": {"reference": "INC-7", "reason": "suspected implant"},
        "operator": {"handle": "olga", "keyid": keyid},
        "acquisition": {"id": 7, "format": "elf"},
        "evidence": {"name": "vm-7.elf", "size": len(dump), "sha256": hashlib.sha256(dump).hexdigest(),
                     "location": "evidence/ab/abcdef.elf"},
    }


def make_evidence(directory: Path, *, tree_size: int = 1, index: int = 0, dump: bytes | None = None,
                  edit_statement: Callable[[dict], None] | None = None,
                  edit_leaf: Callable[[dict], None] | None = None,
                  checkpoint_size: int | None = None, checkpoint_origin: str = LOG_ORIGIN,
                  operator: nacl.signing.SigningKey | None = None,
                  envelope_for: Callable[[bytes], dict] | None = None) -> Evidence:
    """A complete bundle for a dump file written to `directory`, logged at
    `index` of a tree of `tree_size` leaves; the edit hooks sign whatever
    they change, so only the check under test can object."""
    dump = os.urandom(4096) if dump is None else dump
    dump_path = directory / "vm-7.elf"
    dump_path.write_bytes(dump)
    operator = operator or nacl.signing.SigningKey.generate()
    log = nacl.signing.SigningKey.generate()
    keyid = offline_verify.key_id(bytes(operator.verify_key))
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "vm-7.elf", "digest": {"sha256": hashlib.sha256(dump).hexdigest()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": custody(dump, keyid),
    }
    if edit_statement:
        edit_statement(statement)
    payload = canonical_json(statement)
    envelope = envelope_for(payload) if envelope_for else sign_envelope(payload, operator)
    leaf = {
        "kind": "forensics.attestation", "actor": "operator:1", "subject": "acquisition:7",
        "recorded_at": "2025-01-02T03:04:05.678901+00:00",
        "payload": {"subject_sha256": hashlib.sha256(dump).hexdigest(),
                    "payload_sha256": hashlib.sha256(payload).hexdigest(), "keyid": keyid},
    }
    if edit_leaf:
        edit_leaf(leaf)
    body = canonical_json(leaf)
    leaves = [leaf_hash(f"entry {i}".encode()) for i in range(tree_size)]
    leaves[index] = leaf_hash(body)
    root = merkle_root(leaves)
    note = sign_note(checkpoint_body(checkpoint_origin, checkpoint_size or tree_size, root), LOG_ORIGIN, log)
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "dsseEnvelope": envelope,
        "publicKey": {"keyid": keyid, "ed25519": b64(bytes(operator.verify_key))},
        "passkeyCosignature": None,
        "tlogEntry": {
            "logIndex": index,
            "canonicalizedBody": b64(body),
            "inclusionProof": {"treeSize": tree_size, "rootHash": b64(root),
                               "hashes": [b64(h) for h in inclusion_proof(index, leaves)], "checkpoint": note},
        },
        "logKey": offline_verify.format_vkey(LOG_ORIGIN, bytes(log.verify_key)),
    }
    return Evidence(bundle=bundle, dump=dump_path, operator=operator, log=log)


TREES = [(1, 0), (2, 0), (2, 1), (7, 0), (7, 3), (7, 6), (1000, 0), (1000, 511), (1000, 999)]


@pytest.fixture(params=TREES, ids=[f"entry {i} of {n}" for n, i in TREES])
def evidence(request, tmp_path) -> Evidence:
    size, index = request.param
    return make_evidence(tmp_path, tree_size=size, index=index)


def failure(bundle: dict, dump: Path | None = None, **pins) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as failed:
        verify_bundle(bundle, dump, **pins)
    return failed.value


def mutated(bundle: dict, change: Callable[[dict], None]) -> dict:
    copy_ = copy.deepcopy(bundle)
    change(copy_)
    return copy_


# --- passkey assertions ----------------------------------------------------------------------


def challenge_of(bundle: dict) -> str:
    envelope = bundle["dsseEnvelope"]
    signed = offline_verify.pae(envelope["payloadType"], base64.b64decode(envelope["payload"]))
    return b64url(hashlib.sha256(signed).digest())


def std_b64(urlsafe: str) -> str:
    return b64(base64.urlsafe_b64decode(urlsafe + "=" * (-len(urlsafe) % 4)))


def soft_authenticator_cosignature(bundle: dict, **overrides) -> dict:
    """A real ES256 assertion by tests/webauthn_authenticator.py over the
    bundle's challenge, as the server stores it."""
    device = SoftAuthenticator(rp_id=RP_ID, origin=ORIGIN)
    device.create({"rp": {"id": RP_ID, "name": "InfraSim"}, "user": {"id": b64url(b"user-1"), "name": "olga"},
                   "challenge": b64url(b"registration"), "pubKeyCredParams": [{"type": "public-key", "alg": -7}]})
    response = device.get({"challenge": challenge_of(bundle), "rpId": RP_ID}, **overrides)
    credential = device.credentials[-1]
    return {
        "credentialId": response["id"],
        "publicKey": b64(cose_es256_public_key(credential.private_key.public_key())),
        "authenticatorData": std_b64(response["response"]["authenticatorData"]),
        "clientDataJSON": std_b64(response["response"]["clientDataJSON"]),
        "signature": std_b64(response["response"]["signature"]),
        "rpId": RP_ID,
        "origin": ORIGIN,
        "userHandle": response["response"]["userHandle"],
    }


def manual_cosignature(bundle: dict, cose_key: bytes, sign: Callable[[bytes], bytes], *,
                       flags: int = FLAG_UP | FLAG_UV, counter: bytes = (5).to_bytes(4, "big")) -> dict:
    """An assertion made by hand, for the algorithms the soft authenticator lacks."""
    auth_data = hashlib.sha256(RP_ID.encode()).digest() + bytes([flags]) + counter
    client_data = json.dumps({"type": "webauthn.get", "challenge": challenge_of(bundle), "origin": ORIGIN}).encode()
    return {
        "credentialId": b64url(b"credential-1"), "publicKey": b64(cose_key), "authenticatorData": b64(auth_data),
        "clientDataJSON": b64(client_data), "signature": b64(sign(auth_data + hashlib.sha256(client_data).digest())),
        "rpId": RP_ID, "origin": ORIGIN, "userHandle": None,
    }


def cose_ed25519(key: ed25519.Ed25519PrivateKey) -> bytes:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return cbor2.dumps({1: 1, 3: -8, -1: 6, -2: raw})


def cose_rsa(key: rsa.RSAPrivateKey) -> bytes:
    numbers = key.public_key().public_numbers()
    return cbor2.dumps({1: 3, 3: -257, -1: numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"),
                        -2: numbers.e.to_bytes(3, "big")})


def rsa_sign(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    return lambda message: key.sign(message, padding.PKCS1v15(), hashes.SHA256())


# --- a whole bundle verifies ------------------------------------------------------------------


def test_a_bundle_verifies_with_its_dump(evidence: Evidence):
    report = verify_bundle(evidence.bundle, evidence.dump)
    index = evidence.bundle["tlogEntry"]["logIndex"]
    assert [name for name, _ in report.checks] == [
        "bundle", "operator key", "signature", "statement", "subject digest", "log entry binding",
        "inclusion proof", "checkpoint"]
    assert report.verified and report.keyid == evidence.keyid and report.log_index == index
    assert report.tree_size == evidence.bundle["tlogEntry"]["inclusionProof"]["treeSize"]
    assert report.subject_name == "vm-7.elf"
    assert report.subject_sha256 == hashlib.sha256(evidence.dump.read_bytes()).hexdigest()
    assert report.cosigned is False and report.pinned is False
    assert report.skipped == [("passkey co-signature", "the bundle carries none")]


def test_without_the_dump_the_file_check_is_reported_as_skipped(tmp_path):
    evidence = make_evidence(tmp_path)
    report = verify_bundle(evidence.bundle)
    assert "subject digest" not in dict(report.checks)
    assert dict(report.skipped)["subject digest"].startswith("no dump file given")
    verdict = next(line for line in offline_verify.outcome_lines(report) if line.startswith("VERIFIED"))
    assert verdict.endswith("; the dump file itself was not checked")


def test_a_dump_larger_than_one_read_is_hashed_whole(tmp_path):
    evidence = make_evidence(tmp_path, dump=os.urandom(5 * 1024 * 1024 // 2))
    assert verify_bundle(evidence.bundle, str(evidence.dump)).verified
    data = evidence.dump.read_bytes()
    evidence.dump.write_bytes(flipped(data, len(data) - 3))
    assert failure(evidence.bundle, evidence.dump).check == "subject digest"


def test_pinned_keys_must_be_the_bundles_keys(tmp_path):
    evidence = make_evidence(tmp_path, tree_size=7, index=2)
    public_b64 = b64(bytes(evidence.operator.verify_key))
    for pin in (evidence.keyid, evidence.keyid.upper(), public_b64):
        report = verify_bundle(evidence.bundle, evidence.dump, operator_key=pin, log_key=evidence.vkey + "\n")
        assert report.pinned and "(pinned)" in dict(report.checks)["operator key"]
    stranger = nacl.signing.SigningKey.generate()
    refused = failure(evidence.bundle, operator_key=offline_verify.key_id(bytes(stranger.verify_key)))
    assert refused.check == "operator key" and "not by the pinned key" in refused.message
    assert failure(evidence.bundle, operator_key="not a key").check == "operator key"
    other_log = offline_verify.format_vkey(LOG_ORIGIN, bytes(stranger.verify_key))
    refused = failure(evidence.bundle, log_key=other_log)
    assert refused.check == "checkpoint" and "pinned" in refused.message


# --- one flipped byte, one named check -----------------------------------------------------------


def flip_payload(bundle: dict) -> None:
    envelope = bundle["dsseEnvelope"]
    envelope["payload"] = flip_b64(envelope["payload"], 30)


def flip_signature(bundle: dict) -> None:
    signature = bundle["dsseEnvelope"]["signatures"][0]
    signature["sig"] = flip_b64(signature["sig"], 10)


def flip_proof_hash(bundle: dict) -> None:
    proof = bundle["tlogEntry"]["inclusionProof"]
    proof["hashes"][1] = flip_b64(proof["hashes"][1], 0)


def flip_root(bundle: dict) -> None:
    proof = bundle["tlogEntry"]["inclusionProof"]
    proof["rootHash"] = flip_b64(proof["rootHash"], 31)


def flip_checkpoint_text(bundle: dict) -> None:
    proof = bundle["tlogEntry"]["inclusionProof"]
    note = proof["checkpoint"]
    at = note.index("\n", note.index("\n") + 1) - 1  # the last digit of the tree size
    proof["checkpoint"] = note[:at] + chr(ord(note[at]) ^ 1) + note[at + 1 :]


def flip_checkpoint_signature(bundle: dict) -> None:
    proof = bundle["tlogEntry"]["inclusionProof"]
    body, _, line = proof["checkpoint"].rpartition("\n\n")
    dash_and_name, _, signature = line.rstrip("\n").rpartition(" ")
    proof["checkpoint"] = f"{body}\n\n{dash_and_name} {flip_b64(signature, 20)}\n"


def flip_body_at(marker: str) -> Callable[[dict], None]:
    """Flip a character of the leaf inside the value that follows `marker`."""

    def change(bundle: dict) -> None:
        entry = bundle["tlogEntry"]
        body = base64.b64decode(entry["canonicalizedBody"])
        entry["canonicalizedBody"] = b64(flipped(body, body.index(marker.encode()) + len(marker) + 5))

    return change


def flip_cosignature(field: str, at: int) -> Callable[[dict], None]:
    def change(bundle: dict) -> None:
        bundle["passkeyCosignature"][field] = flip_b64(bundle["passkeyCosignature"][field], at)

    return change


TAMPERING = {
    "envelope payload": (flip_payload, "signature"),
    "envelope signature": (flip_signature, "signature"),
    "a proof hash": (flip_proof_hash, "inclusion proof"),
    "the root": (flip_root, "inclusion proof"),
    "the checkpoint text": (flip_checkpoint_text, "checkpoint"),
    "the checkpoint signature": (flip_checkpoint_signature, "checkpoint"),
    "the logged payload hash": (flip_body_at('"payload_sha256":"'), "log entry binding"),
    "the logged subject hash": (flip_body_at('"subject_sha256":"'), "log entry binding"),
    "the logged time": (flip_body_at('"recorded_at":"'), "inclusion proof"),
    "the cosignature's authenticatorData": (flip_cosignature("authenticatorData", 36), "passkey co-signature"),
    "the cosignature's rp id hash": (flip_cosignature("authenticatorData", 0), "passkey co-signature"),
    "the cosignature's clientDataJSON": (flip_cosignature("clientDataJSON", 20), "passkey co-signature"),
    "the cosignature's signature": (flip_cosignature("signature", 12), "passkey co-signature"),
}


@pytest.mark.parametrize("what", TAMPERING)
def test_one_flipped_byte_fails_the_check_that_covers_it(tmp_path, what):
    change, check = TAMPERING[what]
    evidence = make_evidence(tmp_path, tree_size=7, index=3)
    evidence.bundle["passkeyCosignature"] = soft_authenticator_cosignature(evidence.bundle)
    assert verify_bundle(evidence.bundle, evidence.dump).cosigned
    refused = failure(mutated(evidence.bundle, change), evidence.dump)
    assert refused.check == check, refused


def test_a_flipped_byte_of_the_dump_fails_the_subject_digest(evidence: Evidence):
    data = evidence.dump.read_bytes()
    evidence.dump.write_bytes(flipped(data, 100))
    refused = failure(evidence.bundle, evidence.dump)
    assert refused.check == "subject digest" and hashlib.sha256(flipped(data, 100)).hexdigest() in refused.message


def test_a_missing_dump_file_is_a_subject_digest_failure(tmp_path):
    evidence = make_evidence(tmp_path)
    evidence.dump.unlink()
    assert failure(evidence.bundle, evidence.dump).check == "subject digest"


# --- the structure, field by field ------------------------------------------------------------------


@pytest.mark.parametrize("path, value, named", [
    (("mediaType",), "application/json", "mediaType"),
    (("dsseEnvelope", "payload"), None, "dsseEnvelope.payload"),
    (("dsseEnvelope", "payload"), "not base64!", "dsseEnvelope.payload"),
    (("dsseEnvelope", "signatures"), [], "dsseEnvelope.signatures"),
    (("publicKey", "ed25519"), b64(bytes(31)), "publicKey.ed25519"),
    (("tlogEntry", "logIndex"), "3", "tlogEntry.logIndex"),
    (("tlogEntry", "logIndex"), True, "tlogEntry.logIndex"),
    (("tlogEntry", "inclusionProof", "rootHash"), None, "tlogEntry.inclusionProof.rootHash"),
    (("tlogEntry", "inclusionProof", "hashes"), [7], "tlogEntry.inclusionProof.hashes"),
    (("tlogEntry", "inclusionProof", "checkpoint"), 12, "tlogEntry.inclusionProof.checkpoint"),
    (("logKey",), None, "logKey"),
    (("passkeyCosignature",), "yes", "passkeyCosignature"),
])
def test_a_malformed_bundle_names_the_field(tmp_path, path, value, named):
    evidence = make_evidence(tmp_path, tree_size=2, index=1)

    def change(bundle):
        target = bundle
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    refused = failure(mutated(evidence.bundle, change))
    assert refused.check == "bundle" and named in refused.message


def test_a_malformed_cosignature_names_the_field(tmp_path):
    evidence = make_evidence(tmp_path)
    evidence.bundle["passkeyCosignature"] = soft_authenticator_cosignature(evidence.bundle)
    refused = failure(mutated(evidence.bundle, lambda b: b["passkeyCosignature"].pop("clientDataJSON")))
    assert refused.check == "bundle" and "passkeyCosignature.clientDataJSON" in refused.message


def test_the_operator_key_must_be_the_one_that_signed(tmp_path):
    evidence = make_evidence(tmp_path)
    other = nacl.signing.SigningKey.generate()
    swapped = mutated(evidence.bundle, lambda b: b.update(publicKey={
        "keyid": offline_verify.key_id(bytes(other.verify_key)), "ed25519": b64(bytes(other.verify_key))}))
    assert failure(swapped).check == "operator key"
    mislabelled = mutated(evidence.bundle, lambda b: b["publicKey"].update(keyid="ab" * 32))
    refused = failure(mislabelled)
    assert refused.check == "operator key" and "not the SHA-256 of its key" in refused.message


def test_a_statement_of_another_type_is_refused_even_when_signed(tmp_path):
    evidence = make_evidence(tmp_path)
    bundle = mutated(evidence.bundle, lambda b: b.update(dsseEnvelope=sign_envelope(
        base64.b64decode(b["dsseEnvelope"]["payload"]), evidence.operator, payload_type="application/json")))
    refused = failure(bundle)
    assert refused.check == "signature" and "payloadType" in refused.message


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "_type"),
    (lambda s: s.update(predicateType="https://slsa.dev/provenance/v1"), "predicateType"),
    (lambda s: s["subject"].append({"name": "other", "digest": {"sha256": "0" * 64}}), "exactly one subject"),
    (lambda s: s["subject"][0]["digest"].update(sha256="ABC"), "sha256"),
    (lambda s: s["predicate"].pop("case"), "predicate.case"),
    (lambda s: s["predicate"]["evidence"].update(size="4096"), "predicate.evidence.size"),
    (lambda s: s["predicate"]["operator"].update(keyid="cd" * 32), "is not the signing key"),
])
def test_a_signed_statement_with_the_wrong_structure_is_refused(tmp_path, edit, message):
    evidence = make_evidence(tmp_path, edit_statement=edit)
    refused = failure(evidence.bundle, evidence.dump)
    assert refused.check == "statement" and message in refused.message
    assert [name for name, _ in refused.report.checks] == ["bundle", "operator key", "signature"]


def test_a_payload_that_is_not_json_fails_the_statement(tmp_path):
    evidence = make_evidence(tmp_path)
    garbage = mutated(evidence.bundle, lambda b: b.update(dsseEnvelope=sign_envelope(b"\xff{", evidence.operator)))
    assert failure(garbage).check == "statement"
    repeated = b'{"_type":"a","_type":"https://in-toto.io/Statement/v1"}'
    twice = mutated(evidence.bundle, lambda b: b.update(dsseEnvelope=sign_envelope(repeated, evidence.operator)))
    refused = failure(twice)
    assert refused.check == "statement" and "repeats a key" in refused.message


def test_the_claimed_size_and_digest_must_match_the_file(tmp_path):
    evidence = make_evidence(tmp_path, edit_statement=lambda s: s["predicate"]["evidence"].update(size=4095))
    refused = failure(evidence.bundle, evidence.dump)
    assert refused.check == "subject digest" and "4096 bytes" in refused.message
    evidence = make_evidence(tmp_path, edit_statement=lambda s: s["predicate"]["evidence"].update(sha256="e" * 64))
    refused = failure(evidence.bundle)  # inconsistent even without the file
    assert refused.check == "subject digest" and "predicate.evidence.sha256" in refused.message


def test_a_log_entry_of_another_kind_does_not_bind_the_attestation(tmp_path):
    evidence = make_evidence(tmp_path, edit_leaf=lambda leaf: leaf.update(kind="identity.login"))
    refused = failure(evidence.bundle, evidence.dump)
    assert refused.check == "log entry binding" and "identity.login" in refused.message


def test_a_checkpoint_for_another_size_or_origin_is_refused(tmp_path):
    evidence = make_evidence(tmp_path, tree_size=7, index=5, checkpoint_size=8)
    refused = failure(evidence.bundle, evidence.dump)
    assert refused.check == "checkpoint" and "tree of 8" in refused.message
    evidence = make_evidence(tmp_path, tree_size=7, index=5, checkpoint_origin="elsewhere.test/log")
    refused = failure(evidence.bundle, evidence.dump)
    assert refused.check == "checkpoint" and "origin" in refused.message


def test_a_proof_for_another_index_or_size_is_refused(tmp_path):
    evidence = make_evidence(tmp_path, tree_size=1000, index=511)
    assert failure(mutated(evidence.bundle, lambda b: b["tlogEntry"].update(logIndex=510))).check == "inclusion proof"
    deeper = mutated(evidence.bundle, lambda b: b["tlogEntry"]["inclusionProof"].update(treeSize=2000))
    assert failure(deeper).check == "inclusion proof"
    # Leaf 511's path is the same in a tree of 1001: the signed checkpoint catches the lie.
    grown = mutated(evidence.bundle, lambda b: b["tlogEntry"]["inclusionProof"].update(treeSize=1001))
    refused = failure(grown)
    assert refused.check == "checkpoint" and "tree of 1000" in refused.message


# --- signed notes and checkpoints ----------------------------------------------------------------


@pytest.fixture
def note_keys():
    log, witness = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    return log, witness, offline_verify.format_vkey(LOG_ORIGIN, bytes(log.verify_key))


def test_a_checkpoint_round_trips_and_witness_signatures_are_ignored(note_keys):
    log, witness, vkey = note_keys
    root = hashlib.sha256(b"root").digest()
    body = checkpoint_body(LOG_ORIGIN, 42, root)
    note = sign_note(body, LOG_ORIGIN, log)
    assert parse_checkpoint(verify_note(note, vkey)) == (LOG_ORIGIN, 42, root)
    witnessed = note + sign_note(body, "witness.test/w1", witness).split("\n\n")[1]
    assert verify_note(witnessed, vkey) == body
    assert parse_vkey(vkey) == (LOG_ORIGIN, offline_verify.note_key_hash(LOG_ORIGIN, bytes(log.verify_key)),
                                bytes(log.verify_key))
    extended = body + "an extension line\n"
    assert parse_checkpoint(extended) == (LOG_ORIGIN, 42, root)


def test_a_note_signed_only_by_others_or_badly_by_the_log_is_refused(note_keys):
    log, witness, vkey = note_keys
    body = checkpoint_body(LOG_ORIGIN, 3, bytes(32))
    with pytest.raises(NoteError, match="no signature by"):
        verify_note(sign_note(body, LOG_ORIGIN, witness), vkey)  # same name, another key: ignored
    good = sign_note(body, LOG_ORIGIN, log)
    forged = sign_note(body, LOG_ORIGIN, log).replace(body, checkpoint_body(LOG_ORIGIN, 4, bytes(32)))
    with pytest.raises(NoteError, match="does not verify"):
        verify_note(forged + good.split("\n\n")[1], vkey)


@pytest.mark.parametrize("text", [
    "no blank line\n— name AAAAAAAA\n",
    "text\n\n— {name} {sig}",  # no final newline
    "text\n\n- {name} {sig}\n",  # a hyphen, not an em dash
    "text\n\n— {name} not-base64\n",
    "text\n\n— {name} AAAA\n",  # shorter than a key hash and one byte
    "te\txt\n\n— {name} {sig}\n",
    "text\r\n\n— {name} {sig}\n",
    "\n\n— {name} {sig}\n",
])
def test_malformed_notes_are_refused(note_keys, text):
    log, _, vkey = note_keys
    signature = sign_note("text\n", LOG_ORIGIN, log).split(" ")[-1].strip()
    with pytest.raises(NoteError):
        verify_note(text.format(name=LOG_ORIGIN, sig=signature), vkey)


@pytest.mark.parametrize("body", [
    "origin\n42\n",  # no root
    "origin\n042\n" + b64(bytes(32)) + "\n",
    "origin\n-1\n" + b64(bytes(32)) + "\n",
    "origin\n42\n" + b64(bytes(31)) + "\n",
    "origin\n42\n" + b64(bytes(32)),
    "origin\n42\n" + b64(bytes(32)) + "\n\n",
    "\n42\n" + b64(bytes(32)) + "\n",
])
def test_malformed_checkpoints_are_refused(body):
    with pytest.raises(NoteError):
        parse_checkpoint(body)


def test_a_verifier_key_must_carry_its_own_hash(note_keys):
    _, witness, vkey = note_keys
    name, key_hash, key = vkey.split("+", 2)
    wrong_hash = "+".join([name, offline_verify.note_key_hash(name, bytes(witness.verify_key)).hex(), key])
    for bad in (wrong_hash, "has space+" + key_hash + "+" + key, name + "+" + key_hash, name + "+zz+" + key):
        with pytest.raises(NoteError):
            parse_vkey(bad)


# --- the passkey co-signature ----------------------------------------------------------------------


def test_an_es256_passkey_cosignature_verifies_and_reports_user_verification(tmp_path):
    evidence = make_evidence(tmp_path, tree_size=7, index=6)
    evidence.bundle["passkeyCosignature"] = soft_authenticator_cosignature(evidence.bundle)
    report = verify_bundle(evidence.bundle, evidence.dump)
    assert report.cosigned and report.user_verified is True
    assert "ES256" in dict(report.checks)["passkey co-signature"]
    evidence.bundle["passkeyCosignature"] = soft_authenticator_cosignature(evidence.bundle, user_verification=False)
    report = verify_bundle(evidence.bundle)
    assert report.cosigned and report.user_verified is False
    assert "NOT verified" in dict(report.checks)["passkey co-signature"]


@pytest.mark.parametrize("overrides, message", [
    ({"challenge": b64url(hashlib.sha256(b"another envelope").digest())}, "another challenge"),
    ({"type_": "webauthn.create"}, "webauthn.get"),
    ({"origin": "http://localhost:9999"}, "origin"),
    ({"rp_id": "example.com"}, "another relying party"),
])
def test_an_assertion_over_something_else_is_refused(tmp_path, overrides, message):
    evidence = make_evidence(tmp_path)
    evidence.bundle["passkeyCosignature"] = soft_authenticator_cosignature(evidence.bundle, **overrides)
    refused = failure(evidence.bundle)
    assert refused.check == "passkey co-signature" and message in refused.message


def test_the_origin_must_belong_to_the_relying_party(tmp_path):
    evidence = make_evidence(tmp_path)
    cosignature = soft_authenticator_cosignature(evidence.bundle, origin="https://evil.test")
    evidence.bundle["passkeyCosignature"] = dict(cosignature, origin="https://evil.test")
    refused = failure(evidence.bundle)
    assert refused.check == "passkey co-signature" and "not within the relying party" in refused.message


def test_a_cosignature_for_another_envelope_is_refused(tmp_path):
    first, second = make_evidence(tmp_path), make_evidence(tmp_path)
    second.bundle["passkeyCosignature"] = soft_authenticator_cosignature(first.bundle)
    assert failure(second.bundle).check == "passkey co-signature"


def test_eddsa_and_rs256_passkeys_verify_and_tampering_fails(tmp_path):
    evidence = make_evidence(tmp_path)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for cose_key, sign, name in ((cose_ed25519(ed_key), ed_key.sign, "EdDSA"),
                                 (cose_rsa(rsa_key), rsa_sign(rsa_key), "RS256")):
        evidence.bundle["passkeyCosignature"] = manual_cosignature(evidence.bundle, cose_key, sign)
        report = verify_bundle(evidence.bundle)
        assert report.cosigned and dict(report.checks)["passkey co-signature"].startswith(name)
        refused = failure(mutated(evidence.bundle, flip_cosignature("signature", 3)))
        assert refused.check == "passkey co-signature" and name in refused.message


def test_an_assertion_without_user_presence_is_refused(tmp_path):
    evidence = make_evidence(tmp_path)
    key = ed25519.Ed25519PrivateKey.generate()
    evidence.bundle["passkeyCosignature"] = manual_cosignature(evidence.bundle, cose_ed25519(key), key.sign,
                                                               flags=FLAG_UV)
    refused = failure(evidence.bundle)
    assert refused.check == "passkey co-signature" and "present" in refused.message


def test_authenticator_data_without_its_counter_is_refused(tmp_path):
    evidence = make_evidence(tmp_path)
    key = ed25519.Ed25519PrivateKey.generate()
    evidence.bundle["passkeyCosignature"] = manual_cosignature(evidence.bundle, cose_ed25519(key), key.sign,
                                                               counter=b"")
    refused = failure(evidence.bundle)
    assert refused.check == "passkey co-signature" and "shorter than 37 bytes" in refused.message


def test_pure_python_p256_agrees_with_cryptography():
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    for _ in range(150):
        message = os.urandom(int.from_bytes(os.urandom(1), "big"))
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
        assert verify_es256(numbers.x, numbers.y, message, signature)
        assert not verify_es256(numbers.x, numbers.y, message + b"!", signature)
    r, s = decode_dss_signature(signature)
    assert verify_es256(numbers.x, numbers.y, message, encode_dss_signature(r, ec_order() - s))  # ECDSA allows both s
    for bad_r, bad_s in ((0, s), (r, 0), (r + ec_order(), s), (r, s + ec_order())):
        assert not verify_es256(numbers.x, numbers.y, message, encode_dss_signature(bad_r, bad_s))
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    assert not verify_es256(other.x, other.y, message, signature)


def ec_order() -> int:
    return 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_p256_refuses_points_off_the_curve_and_signatures_that_are_not_der():
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    signature = key.sign(b"message", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(ValueError, match="not a point on P-256"):
        verify_es256(numbers.x, numbers.y ^ 1, b"message", signature)
    with pytest.raises(ValueError, match="not a point on P-256"):
        verify_es256(numbers.x + (1 << 256), numbers.y, b"message", signature)
    r, s = decode_dss_signature(signature)
    assert verify_es256(numbers.x, numbers.y, b"message", der_sequence(der_integer(r), der_integer(s)))
    not_der = (
        r.to_bytes(32, "big") + s.to_bytes(32, "big"),  # the raw form WebAuthn does not use
        signature + b"\x00",
        signature[:-1],
        der_sequence(b"\x02\x21\x00\x00" + r.to_bytes(32, "big")[1:], der_integer(s)),  # a needless leading zero
        der_sequence(der_integer(r)),
    )
    for bad in not_der:
        with pytest.raises(ValueError, match="DER"):
            verify_es256(numbers.x, numbers.y, b"message", bad)


def der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading zero byte exactly when the top bit is set
    return b"\x02" + bytes([len(body)]) + body


def der_sequence(*items: bytes) -> bytes:
    content = b"".join(items)
    return b"\x30" + bytes([len(content)]) + content


def test_rs256_checks_the_whole_encoding_and_refuses_short_keys():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n, e = key.public_key().public_numbers().n, key.public_key().public_numbers().e
    signature = key.sign(b"message", padding.PKCS1v15(), hashes.SHA256())
    assert verify_rs256(n, e, b"message", signature)
    assert not verify_rs256(n, e, b"messagf", signature)
    assert not verify_rs256(n, e, b"message", signature[1:])
    pss = key.sign(b"message", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    assert not verify_rs256(n, e, b"message", pss)
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="shorter than 2048"):
        cose_verifier(cose_rsa(short))


def test_cose_keys_of_unsupported_kinds_are_refused():
    for key in ({1: 2, 3: -35, -1: 2, -2: bytes(48), -3: bytes(48)},  # ES384
                {1: 2, 3: -7, -1: 1, -2: bytes(32), -3: bytes(32)},  # not on the curve
                {1: 1, 3: -8, -1: 7, -2: bytes(57)},  # Ed448
                {1: 3, 3: -37, -1: bytes(256), -2: b"\x01\x00\x01"}):  # PS256
        with pytest.raises(ValueError):
            cose_verifier(cbor2.dumps(key))


# --- the CBOR subset ---------------------------------------------------------------------------------


def test_cbor_decodes_maps_integers_and_strings_like_cbor2():
    value = {1: 2, 3: -7, -1: 1, -2: b"x" * 32, "text": "é", 24: 255, 256: 65536, -1000: 2**64 - 1,
             "nested": {-(2**64): b""}}
    assert cbor_decode(cbor2.dumps(value)) == value


@pytest.mark.parametrize("data", [
    cbor2.dumps([1, 2]),
    cbor2.dumps(1.5),
    cbor2.dumps(True),
    cbor2.dumps(None),
    cbor2.dumps(cbor2.CBORTag(24, b"")),
    cbor2.dumps({1: 2}) + b"\x00",
    cbor2.dumps({1: 2})[:-1],
    b"\xa2\x01\x02\x01\x03",  # a repeated key
    b"\x5f\x41\x00\xff",  # an indefinite-length byte string
    b"\x1c" + bytes(16),  # a reserved argument width
    b"\x62\xff\xfe",  # text that is not UTF-8
    b"\x5b" + (2**64 - 1).to_bytes(8, "big"),  # a string longer than the data
    b"\xa1" * 40 + b"\x01",  # maps nested past any COSE key
])
def test_cbor_outside_the_subset_is_refused(data):
    with pytest.raises(CborError):
        cbor_decode(data)


# --- interoperability with securesystemslib ------------------------------------------------------


def test_securesystemslib_accepts_our_envelope(tmp_path):
    evidence = make_evidence(tmp_path)
    public = SSlibKey(evidence.keyid, "ed25519", "ed25519", {"public": bytes(evidence.operator.verify_key).hex()})
    envelope = Envelope.from_dict(copy.deepcopy(evidence.bundle["dsseEnvelope"]))
    assert set(envelope.verify([public], 1)) == {evidence.keyid}


def test_our_verifier_accepts_an_envelope_signed_by_securesystemslib(tmp_path):
    operator = nacl.signing.SigningKey.generate()
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(operator))  # the same Ed25519 seed
    keyid = offline_verify.key_id(bytes(operator.verify_key))
    signer = CryptoSigner(private, SSlibKey.from_crypto(private.public_key(), keyid, "ed25519"))
    signed_payloads = []

    def sslib_envelope(payload: bytes) -> dict:
        envelope = Envelope(payload, "application/vnd.in-toto+json", {})
        envelope.sign(signer)
        signed_payloads.append(payload)
        return envelope.to_dict()

    evidence = make_evidence(tmp_path, operator=operator, envelope_for=sslib_envelope)
    assert signed_payloads and verify_bundle(evidence.bundle, evidence.dump, operator_key=keyid).verified
    # Ed25519 is deterministic: both libraries make the very same envelope.
    assert evidence.bundle["dsseEnvelope"] == sign_envelope(signed_payloads[0], operator)
    assert failure(mutated(evidence.bundle, flip_payload)).check == "signature"


# --- the command line: standalone, in-process and through manage.py --------------------------------


def test_the_verifier_imports_nothing_but_the_standard_library_and_pynacl():
    tree = ast.parse(VERIFIER_SOURCE.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) == {"nacl"}


def run_standalone(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """The single file, copied alone into a directory and run in isolated
    mode: no InfraSim, no Django, no PYTHONPATH."""
    shutil.copy(VERIFIER_SOURCE, directory / "offline_verify.py")
    return subprocess.run([sys.executable, "-I", "offline_verify.py", *args], cwd=directory,
                          capture_output=True, text=True, timeout=120, env={"PATH": os.environ.get("PATH", "")})


def test_the_copied_file_verifies_a_bundle_on_its_own(tmp_path):
    evidence = make_evidence(tmp_path, tree_size=1000, index=999)
    evidence.bundle["passkeyCosignature"] = soft_authenticator_cosignature(evidence.bundle)
    standalone = tmp_path / "elsewhere"
    standalone.mkdir()
    shutil.copy(evidence.dump, standalone / "dump.bin")
    evidence.write(standalone)

    ran = run_standalone(standalone, "bundle.json", "dump.bin")
    assert ran.returncode == 0, ran.stderr
    assert f"ok   signature: ed25519 key {evidence.keyid[:16]}…" in ran.stdout
    assert "ok   passkey co-signature: ES256" in ran.stdout
    assert "UNPINNED" in ran.stdout and evidence.keyid in ran.stdout and evidence.vkey in ran.stdout

    pinned = run_standalone(standalone, "bundle.json", "dump.bin", "--log-key", evidence.vkey,
                            "--operator-key", evidence.keyid)
    assert pinned.returncode == 0 and "UNPINNED" not in pinned.stdout and "pinned:" in pinned.stdout

    data = (standalone / "dump.bin").read_bytes()
    (standalone / "dump.bin").write_bytes(flipped(data, 7))
    refused = run_standalone(standalone, "bundle.json", "dump.bin")
    assert refused.returncode == 1 and refused.stderr.startswith("FAILED subject digest: dump.bin has sha256")
    assert "ok   statement:" in refused.stdout and "VERIFIED" not in refused.stdout


def test_main_returns_the_exit_code_and_names_the_failed_check(tmp_path, capsys):
    evidence = make_evidence(tmp_path, tree_size=7, index=4)
    path = evidence.write(tmp_path)
    assert offline_verify.main([str(path), str(evidence.dump), "--operator-key", evidence.keyid]) == 0
    out = capsys.readouterr().out
    assert "VERIFIED vm-7.elf" in out and "log key: " + evidence.vkey in out and "operator key id" not in out

    path.write_text(json.dumps(mutated(evidence.bundle, flip_checkpoint_signature)))
    assert offline_verify.main([str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("FAILED checkpoint: the signature by") and "ok   inclusion proof" in captured.out

    path.write_text("{not json")
    assert offline_verify.main([str(path)]) == 1
    assert capsys.readouterr().err.startswith("FAILED bundle: cannot read")
    assert offline_verify.main([str(tmp_path / "missing.json")]) == 1


def test_manage_py_forensics_verify(tmp_path, capsys):
    evidence = make_evidence(tmp_path, tree_size=2, index=1)
    path = evidence.write(tmp_path)
    call_command("forensics_verify", str(path), str(evidence.dump), "--log-key", evidence.vkey)
    out = capsys.readouterr().out
    assert "ok   checkpoint: signed by " + LOG_ORIGIN in out and "VERIFIED" in out

    path.write_text(json.dumps(mutated(evidence.bundle, flip_root)))
    with pytest.raises(CommandError, match="^FAILED inclusion proof: "):
        call_command("forensics_verify", str(path), str(evidence.dump))
    assert "ok   log entry binding" in capsys.readouterr().out
    with pytest.raises(CommandError, match="^FAILED operator key: "):
        call_command("forensics_verify", str(path), "--operator-key", "00" * 32)
