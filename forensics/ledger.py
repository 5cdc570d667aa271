"""The append-only transparency log every app records security events in.

This module imports no other app, so identity, mesh and appliances may all
depend on it. Leaves and nodes follow RFC 6962 / RFC 9162 (forensics.merkle).

- Every entry gets an `index` (0, 1, 2, ...) from one serialized appender:
  record() locks the one-row LedgerHead, takes its size as the index and
  moves it on in the caller's transaction, so a rollback gives the index back
  and no index, once committed, ever changes.
- As leaves arrive, the roots of the complete subtrees they finish are
  stored (LedgerNode, one per append on average), and the head keeps the
  compact range of the whole tree, so the root never needs a scan and a
  proof for any earlier tree size reads O(log n) stored hashes.
- checkpoint() signs the head as a C2SP tlog-checkpoint and keeps the note.
- verify() recomputes everything from the stored leaf bytes, streaming.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Iterator

from django.db import connection, transaction
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from forensics.merkle import HASH_SIZE, ProofError, empty_root, leaf_hash, node_hash
from forensics.models import LedgerCheckpoint, LedgerEntry, LedgerHead, LedgerNode
from forensics.offline_verify import NoteError, parse_checkpoint, verify_note
from forensics.signatures import log_origin, log_vkey, sign_checkpoint

LEAF_FIELDS = ("kind", "actor", "subject", "payload", "recorded_at")
ACTOR_USER = re.compile(r"(?:user|operator):(\d+)")


class LedgerDamaged(RuntimeError):
    """The stored log contradicts itself (rows changed outside the application)."""


def canonical_leaf(*, kind: str, actor: str, subject: str, payload: dict, recorded_at: str) -> bytes:
    return json.dumps(
        {"kind": kind, "actor": actor, "subject": subject, "payload": payload, "recorded_at": recorded_at},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    ).encode()


def actor_label(user) -> str:
    if user is None:
        return "system"
    return f"{'operator' if user.is_staff else 'user'}:{user.pk}"


def concerned_user(actor: str) -> int | None:
    """The user an actor label names (`user:<id>`, `operator:<id>`), if any."""
    match = ACTOR_USER.fullmatch(actor)
    return int(match[1]) if match else None


# --- The tree's shape ---------------------------------------------------------------------


def _fold(subtrees: list[bytes]) -> bytes:
    """The root over complete subtrees listed largest first, as RFC 6962
    splits a tree: the largest power of two on the left, the rest folded right."""
    if not subtrees:
        return empty_root()
    root = subtrees[-1]
    for left in reversed(subtrees[:-1]):
        root = node_hash(left, root)
    return root


class CompactRange:
    """The roots of the complete subtrees that make up leaves [0, size),
    largest (leftmost) first: one per set bit of size, and all an appender
    needs to know of the tree."""

    def __init__(self, size: int = 0, hashes: list[bytes] | None = None):
        hashes = list(hashes or [])
        if len(hashes) != size.bit_count():
            raise LedgerDamaged(
                f"a tree of {size} leaves has {size.bit_count()} subtrees in its range, not {len(hashes)}"
            )
        self.size = size
        self.hashes = hashes

    @classmethod
    def unpack(cls, size: int, packed: bytes) -> CompactRange:
        return cls(size, [packed[at : at + HASH_SIZE] for at in range(0, len(packed), HASH_SIZE)])

    def pack(self) -> bytes:
        return b"".join(self.hashes)

    def levels(self) -> list[int]:
        return [level for level in reversed(range(self.size.bit_length())) if self.size >> level & 1]

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add leaf number `size`; return the subtrees it completes as
        (level, index, hash), lowest first (none for an even index)."""
        node, level, completed = leaf, 0, []
        while self.size >> level & 1:
            node = node_hash(self.hashes.pop(), node)
            level += 1
            completed.append((level, self.size >> level, node))
        self.hashes.append(node)
        self.size += 1
        return completed

    def root(self) -> bytes:
        return _fold(self.hashes)


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _blocks(start: int, end: int) -> list[tuple[int, int]]:
    """Leaves [start, end) as complete subtrees (level, index), largest first.
    `start` is a multiple of a power of two at least end - start, as it is
    for every subtree of an RFC 6962 tree."""
    blocks = []
    length = end - start
    for level in reversed(range(length.bit_length())):
        if length >> level & 1:
            blocks.append((level, start >> level))
            start += 1 << level
    return blocks


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots make PATH(index, D[size]), leaf side first
    (RFC 6962 section 2.1.1, unrolled as in forensics.merkle)."""
    ranges = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    return ranges[::-1]


def _consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots make PROOF(first, D[second]) (RFC 6962
    section 2.1.2, SUBPROOF unrolled as in forensics.merkle)."""
    ranges = []
    start, end, complete, m = 0, second, True, first
    while True:
        n = end - start
        if m == n:
            if not complete:
                ranges.append((start, end))
            break
        k = _split(n)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
            complete = False
    return ranges[::-1]


def _stored_subtrees(blocks: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored roots of these complete subtrees, in one round trip: level 0
    is an entry's own leaf hash, the rest are LedgerNode rows. Raw SQL, since
    this is the whole cost of a proof and the ORM would triple it."""
    quote = connection.ops.quote_name
    leaves = sorted(index for level, index in blocks if level == 0)
    nodes = sorted((level, index) for level, index in blocks if level > 0)
    parts: list[str] = []
    params: list[int] = []
    if nodes:
        match = " OR ".join([f"(level = %s AND {quote('index')} = %s)"] * len(nodes))
        parts.append(f"SELECT level, {quote('index')}, hash, NULL FROM {LedgerNode._meta.db_table} WHERE {match}")
        params.extend(value for position in nodes for value in position)
    if leaves:
        listed = ", ".join(["%s"] * len(leaves))
        parts.append(
            f"SELECT 0, {quote('index')}, NULL, leaf_hash FROM {LedgerEntry._meta.db_table} "
            f"WHERE {quote('index')} IN ({listed})"
        )
        params.extend(leaves)
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        rows = cursor.fetchall()
    return {
        (level, index): bytes(node) if node is not None else bytes.fromhex(leaf) for level, index, node, leaf in rows
    }


def _roots_of(ranges: list[tuple[int, int]], tree_size: int) -> list[bytes]:
    """The root of each leaf range, from stored subtrees, checking on the way
    that the log holds `tree_size` leaves (its last leaf rides along)."""
    block_lists = [_blocks(start, end) for start, end in ranges]
    last_leaf = (0, tree_size - 1)
    stored = _stored_subtrees({last_leaf, *(block for blocks in block_lists for block in blocks)})
    if last_leaf not in stored:
        raise ProofError(f"the log holds fewer than {tree_size} entries")
    try:
        return [_fold([stored[block] for block in blocks]) for blocks in block_lists]
    except KeyError as missing:
        level, index = missing.args[0]
        raise LedgerDamaged(f"stored node {level}/{index} is missing") from None


# --- Appending ------------------------------------------------------------------------------


def _locked_head() -> CompactRange:
    """The head, locked until the transaction ends (on SQLite the IMMEDIATE
    transaction already holds the database's write lock)."""
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT size, frontier FROM {LedgerHead._meta.db_table} WHERE id = %s{lock}", [LedgerHead.ONLY])
        row = cursor.fetchone()
    if row is None:
        # A new database: create the head, or wait for whoever just did.
        head, _ = LedgerHead.objects.select_for_update().get_or_create(
            id=LedgerHead.ONLY, defaults={"root": empty_root()}
        )
        row = (head.size, head.frontier)
    return CompactRange.unpack(row[0], bytes(row[1]))


def _new_entry(
    index: int, *, kind: str, actor: str, subject: str, payload: dict | None, concerns: int | None
) -> tuple[LedgerEntry, bytes]:
    """The unsaved entry at `index` and its leaf hash."""
    recorded_at = timezone.now()
    data = canonical_leaf(
        kind=kind, actor=actor, subject=subject, payload=payload or {}, recorded_at=recorded_at.isoformat()
    )
    leaf = leaf_hash(data)
    entry = LedgerEntry(
        index=index,
        kind=kind,
        actor=actor,
        subject=subject,
        # The payload as the leaf encodes it (tuples become lists...), so the
        # row and the leaf say the same thing.
        payload=json.loads(data)["payload"],
        concerns=concerns if concerns is not None else concerned_user(actor),
        recorded_at=recorded_at,
        leaf=data,
        leaf_version=LedgerEntry.LEAF_RECORDED,
        leaf_hash=leaf.hex(),
    )
    return entry, leaf


def _store(tree: CompactRange, nodes: list[tuple[int, int, bytes]]) -> None:
    """Write the subtrees an append completed and move the head. Plain SQL:
    this is most of an append's cost, which the ORM would double."""
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        if nodes:
            cursor.execute(
                f"INSERT INTO {LedgerNode._meta.db_table} (level, {quote('index')}, hash) VALUES "
                + ", ".join(["(%s, %s, %s)"] * len(nodes)),
                [value for node in nodes for value in node],
            )
        cursor.execute(
            f"UPDATE {LedgerHead._meta.db_table} SET size = %s, root = %s, frontier = %s WHERE id = %s",
            [tree.size, tree.root(), tree.pack(), LedgerHead.ONLY],
        )


def record(
    *, kind: str, actor: str, subject: str, payload: dict | None = None, concerns: int | None = None
) -> LedgerEntry:
    """Append one event. Call inside the transaction that makes the change, so
    the event and the change commit or roll back together. `concerns` is the
    id of the user the event is about (default: the user in `actor`); it
    decides who may read the entry and is not hashed."""
    with transaction.atomic():
        tree = _locked_head()
        # Made under the lock, so recorded_at never goes back along the log.
        entry, leaf = _new_entry(tree.size, kind=kind, actor=actor, subject=subject, payload=payload, concerns=concerns)
        entry.save(force_insert=True)
        _store(tree, tree.append(leaf))
    return entry


def record_many(events: Iterable[dict], *, batch_size: int = 5000) -> int:
    """Append many events in one transaction, written in batches: for
    importing or building a large log quickly. Each event holds record()'s
    keyword arguments. Returns the new size of the log."""
    with transaction.atomic():
        tree = _locked_head()
        entries: list[LedgerEntry] = []
        nodes: list[LedgerNode] = []
        for event in events:
            entry, leaf = _new_entry(
                tree.size, kind=event["kind"], actor=event["actor"], subject=event["subject"],
                payload=event.get("payload"), concerns=event.get("concerns"),
            )
            entries.append(entry)
            nodes.extend(LedgerNode(level=level, index=i, hash=h) for level, i, h in tree.append(leaf))
            if len(entries) >= batch_size:
                LedgerEntry.objects.bulk_create(entries)
                LedgerNode.objects.bulk_create(nodes)
                entries, nodes = [], []
        LedgerEntry.objects.bulk_create(entries)
        LedgerNode.objects.bulk_create(nodes)
        _store(tree, [])
    return tree.size


# --- Reading --------------------------------------------------------------------------------


def _head() -> tuple[int, bytes]:
    row = LedgerHead.objects.filter(id=LedgerHead.ONLY).values_list("size", "root").first()
    return (row[0], bytes(row[1])) if row else (0, empty_root())


def tree_head() -> dict:
    size, root = _head()
    return {"size": size, "root": root.hex()}


def root_at(size: int) -> bytes:
    """The root the log had when it held `size` entries."""
    if size < 0:
        raise ProofError(f"no tree has {size} entries")
    if size == 0:
        return empty_root()
    return _roots_of([(0, size)], size)[0]


def inclusion_proof(index: int, tree_size: int) -> list[bytes]:
    """The audit path of entry `index` in the tree of the first `tree_size` entries."""
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of {tree_size}")
    return _roots_of(_inclusion_ranges(index, tree_size), tree_size)


def consistency_proof(first: int, second: int) -> list[bytes]:
    """Proof that the tree of the first `first` entries is a prefix of the tree of `second`."""
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from size {first} to size {second}")
    return _roots_of(_consistency_ranges(first, second), second)


def entry_at(index: int) -> LedgerEntry:
    return LedgerEntry.objects.get(index=index)


def entries_visible_to(user) -> QuerySet[LedgerEntry]:
    """Operators read every entry; everyone else the entries that concern them."""
    if user is None or not getattr(user, "is_authenticated", False):
        return LedgerEntry.objects.none()
    if user.is_staff:
        return LedgerEntry.objects.all()
    return LedgerEntry.objects.filter(concerns=user.pk)


# --- Checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedHead:
    size: int
    root: bytes


def _checkpoint(size: int, root: bytes) -> str:
    stored, _ = LedgerCheckpoint.objects.get_or_create(
        size=size, defaults={"root": root, "note": lambda: sign_checkpoint(size, root)}
    )
    if bytes(stored.root) != root:
        raise LedgerDamaged(f"the checkpoint at size {size} signs another root than the log has")
    return stored.note


def checkpoint() -> str:
    """The signed note (C2SP tlog-checkpoint) of the log as it is now, kept
    so that it can be checked against the log later."""
    return _checkpoint(*_head())


def checkpoint_for(size: int) -> str:
    """The signed note of the log when it held `size` entries."""
    return _checkpoint(size, root_at(size))


def parse_checkpoint_note(note: str) -> SignedHead:
    """The tree head a checkpoint note signs, once its signature by the log's
    key verifies (NoteError otherwise)."""
    origin, size, root = parse_checkpoint(verify_note(note, log_vkey()))
    if origin != log_origin():
        raise NoteError(f"the checkpoint is for the log {origin!r}, not {log_origin()!r}")
    return SignedHead(size=size, root=root)


# --- Verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    size: int
    root: str
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _leaf_disagreements(entry: LedgerEntry, data: bytes) -> list[str]:
    try:
        leaf = json.loads(data)
    except ValueError:
        return ["the stored leaf is not JSON"]
    if not isinstance(leaf, dict) or sorted(leaf) != sorted(LEAF_FIELDS):
        return [f"the stored leaf does not hold exactly {', '.join(LEAF_FIELDS)}"]
    found = []
    for name in ("kind", "actor", "subject", "payload"):
        if leaf[name] != getattr(entry, name):
            found.append(f"{name} is {getattr(entry, name)!r} but the leaf says {leaf[name]!r}")
    try:
        hashed_time = datetime.fromisoformat(leaf["recorded_at"])
    except (TypeError, ValueError):
        hashed_time = None
    if hashed_time != entry.recorded_at:
        found.append(f"recorded_at is {entry.recorded_at.isoformat()} but the leaf says {leaf['recorded_at']!r}")
    return found


def _span(level: int, index: int) -> str:
    return f"indexes {index << level}..{((index + 1) << level) - 1}"


class _LogCheck:
    """One streaming pass over the log in index order. Memory holds the
    compact range, one chunk of stored nodes and the problems found.

    A recomputed subtree that differs from its stored node is reported only
    when everything under it agreed ("clean"), so one rewritten entry gives
    one problem naming it rather than one per level above it."""

    CHUNK = 4096  # leaves per batch of stored nodes; a power of two, so no pair straddles two batches
    UNKNOWN = bytes(HASH_SIZE)  # stands in for a deleted entry's leaf

    def __init__(self, trusted_head: dict | None):
        self.trusted = trusted_head
        self.problems: list[str] = []
        self.tree = CompactRange()
        self.clean: list[bool] = []  # one per subtree of the compact range
        self.last_entry: LedgerEntry | None = None
        self.previous_entry: LedgerEntry | None = None
        self.stored_nodes: dict[tuple[int, int], bytes] = {}
        self.vkey = log_vkey()
        self.origin = log_origin()
        self.checkpoints: Iterator[LedgerCheckpoint] = iter(())
        self.pending: LedgerCheckpoint | None = None
        self.checkpoints_checked = 0

    def run(self) -> Verification:
        size, head_root, frontier = self._read_head()
        self.checkpoints = LedgerCheckpoint.objects.filter(size__lte=size).order_by("size").iterator(chunk_size=500)
        self.pending = next(self.checkpoints, None)
        self._at_size()
        positions = self._positions(size)
        for start in range(0, size, self.CHUNK):
            end = min(start + self.CHUNK, size)
            self.stored_nodes = self._nodes_completed_in(start, end)
            for _ in range(start, end):
                self._add(*next(positions))
        self._check_head(size, head_root, frontier)
        if self.trusted is not None and self.trusted["size"] > size:
            self.problems.append(
                f"the ledger holds {size} entries, fewer than the trusted head's {self.trusted['size']}"
            )
        self._check_beyond(size)
        return Verification(
            size=size, root=self.tree.root().hex(), checkpoints=self.checkpoints_checked, problems=self.problems
        )

    @staticmethod
    def _read_head() -> tuple[int, bytes, bytes]:
        head = LedgerHead.objects.filter(id=LedgerHead.ONLY).first()
        if head is None:
            return 0, empty_root(), b""
        return head.size, bytes(head.root), bytes(head.frontier)

    def _positions(self, size: int) -> Iterator[tuple[int, LedgerEntry | None]]:
        """Every index below `size` with its entry, None where it is missing."""
        expected = 0
        for entry in LedgerEntry.objects.filter(index__gte=0, index__lt=size).order_by("index", "id").iterator(
            chunk_size=2000
        ):
            if entry.index < expected:
                self.problems.append(f"entry #{entry.pk} (index {entry.index}): index {entry.index} is taken twice")
                continue
            self._report_missing(expected, entry.index)
            for missing in range(expected, entry.index):
                yield missing, None
            yield entry.index, entry
            expected = entry.index + 1
        self._report_missing(expected, size)
        for missing in range(expected, size):
            yield missing, None

    def _report_missing(self, start: int, end: int) -> None:
        if end - start == 1:
            self.problems.append(f"index {start} is missing: its entry was deleted")
        elif end > start:
            self.problems.append(f"indexes {start}..{end - 1} are missing: their entries were deleted")

    def _nodes_completed_in(self, start: int, end: int) -> dict[tuple[int, int], bytes]:
        """Stored nodes whose last leaf lies in [start, end)."""
        wanted = Q()
        for level in range(1, end.bit_length() + 1):
            if start >> level < end >> level:
                wanted |= Q(level=level, index__gte=start >> level, index__lt=end >> level)
        if not wanted:
            return {}
        rows = LedgerNode.objects.filter(wanted).values_list("level", "index", "hash")
        return {(level, index): bytes(node) for level, index, node in rows}

    def _check_entry(self, entry: LedgerEntry) -> tuple[bytes, bool]:
        data = bytes(entry.leaf)
        computed = leaf_hash(data)
        where = f"entry #{entry.pk} (index {entry.index})"
        clean = computed.hex() == entry.leaf_hash
        if not clean:
            self.problems.append(f"{where}: leaf_hash does not match the stored leaf")
        self.problems.extend(f"{where}: {found}" for found in _leaf_disagreements(entry, data))
        return computed, clean

    def _add(self, position: int, entry: LedgerEntry | None) -> None:
        leaf, clean = self._check_entry(entry) if entry is not None else (self.UNKNOWN, False)
        if position % 2 == 0:
            self.previous_entry = entry
        self.last_entry = entry
        for level, index, computed in self.tree.append(leaf):
            below_clean = self.clean.pop() and clean
            stored = self.stored_nodes.get((level, index))
            if stored is None:
                self.problems.append(f"stored node {level}/{index} over {_span(level, index)} is missing")
            elif stored != computed and below_clean:
                self.problems.append(self._node_mismatch(level, index, entry))
            clean = below_clean and stored == computed
        self.clean.append(clean)
        self._at_size()

    def _node_mismatch(self, level: int, index: int, right: LedgerEntry) -> str:
        if level == 1:
            left = self.previous_entry
            return (
                f"entries #{left.pk} (index {left.index}) and #{right.pk} (index {right.index}) do not hash to "
                f"stored node 1/{index}: one of them was rewritten, moved or put in place of another"
            )
        return f"stored node {level}/{index} over {_span(level, index)} was rewritten: it is not the hash of its halves"

    def _at_size(self) -> None:
        """Checks that need the recomputed root at exactly this many leaves."""
        while self.pending is not None and self.pending.size == self.tree.size:
            self._check_checkpoint(self.pending, self.tree.root())
            self.pending = next(self.checkpoints, None)
        if self.trusted is not None and self.trusted["size"] == self.tree.size:
            if self.tree.root().hex() != self.trusted["root"]:
                self.problems.append(
                    f"the first {self.tree.size} entries no longer have the trusted root {self.trusted['root']}"
                )

    def _check_checkpoint(self, stored: LedgerCheckpoint, root: bytes) -> None:
        self.checkpoints_checked += 1
        where = f"checkpoint at size {stored.size}"
        try:
            origin, size, signed_root = parse_checkpoint(verify_note(stored.note, self.vkey))
        except NoteError as error:
            self.problems.append(f"{where}: {error}")
        else:
            if (origin, size, signed_root) != (self.origin, stored.size, bytes(stored.root)):
                self.problems.append(
                    f"{where}: its note signs size {size} root {signed_root.hex()} of {origin!r}, not its row's"
                )
        if bytes(stored.root) != root:
            self.problems.append(f"{where} holds root {bytes(stored.root).hex()}, but the entries give {root.hex()}")

    def _check_head(self, size: int, head_root: bytes, frontier: bytes) -> None:
        try:
            stored = CompactRange.unpack(size, frontier)
        except LedgerDamaged as error:
            self.problems.append(f"the head is malformed: {error}")
            return
        start = 0
        for level, computed, kept, clean in zip(self.tree.levels(), self.tree.hashes, stored.hashes, self.clean):
            if computed != kept and clean:
                if level == 0:
                    entry = self.last_entry
                    self.problems.append(f"entry #{entry.pk} (index {entry.index}) is not the last leaf the head holds")
                else:
                    last = start + (1 << level) - 1
                    self.problems.append(f"the head's subtree over indexes {start}..{last} does not match the entries")
            start += 1 << level
        if stored.hashes == self.tree.hashes and head_root != self.tree.root():
            self.problems.append(f"the head's root {head_root.hex()} is not the root of its {size} entries")

    def _check_beyond(self, size: int) -> None:
        """Rows past the head read at the start. Appends that committed
        since are fine; the rest were put there outside the application. The
        rows are read before the head is read again: a row that is past even
        that head cannot be an append (which moves the head with it)."""
        entries = list(
            LedgerEntry.objects.filter(Q(index__gte=size) | Q(index__lt=0)).values_list("pk", "index")
        )
        top_level = LedgerNode.objects.aggregate(top=Max("level"))["top"] or 0
        beyond = Q(level=0)
        for level in range(1, top_level + 1):
            beyond |= Q(level=level, index__gte=size >> level)
        nodes = list(LedgerNode.objects.filter(beyond).values_list("level", "index"))
        checkpoints = list(LedgerCheckpoint.objects.filter(size__gt=size).values_list("size", flat=True))
        now, _, _ = self._read_head()
        for pk, index in entries:
            if not 0 <= index < now:
                self.problems.append(f"entry #{pk} (index {index}) lies outside the head's {now} entries")
        for level, index in nodes:
            if level == 0 or (index + 1) << level > now:
                self.problems.append(f"stored node {level}/{index} lies outside the head's {now} entries")
        for checkpoint_size in checkpoints:
            if checkpoint_size > now:
                self.problems.append(f"checkpoint at size {checkpoint_size} lies beyond the head's {now} entries")


def verify(*, trusted_head: dict | None = None) -> Verification:
    """Recompute every leaf hash from the stored leaf bytes, check that each
    leaf says what its row says, that the indexes run from 0 without a gap,
    that every stored node and the head are the hashes of the entries under
    them, and that every stored checkpoint is signed by the log's key and
    signs the root the entries give at its size. With `trusted_head` (an
    earlier tree_head()), also check that the log still starts with exactly
    that tree. Streams: memory does not grow with the log."""
    return _LogCheck(trusted_head).run()
