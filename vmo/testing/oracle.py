"""A deliberately naive model of VMOs: the oracle every real read is compared with.

Each VMO is a flat ``bytearray`` (its *store*), snapshots copy their parent's bytes eagerly, and
slices are windows onto their base's store. Every rule that decides success or failure of a call
is written out here in plain terms, so that the oracle doubles as an executable summary of the
semantics `vmo` implements (those of ``zx_vmo_*``).

The oracle predicts outcomes: each method returns the `Status` the real call must fail with, or
``None`` when it must succeed, and applies the effect of a successful call to the model.
"""

from __future__ import annotations

import enum
import itertools

import attrs

from vmo.errors import Status
from vmo.pmm import PAGE_SIZE

U64 = 1 << 64
MAX_SIZE = U64 - PAGE_SIZE


class Disc(enum.Enum):
    NONE = "not discardable"
    NEVER_LOCKED = "never locked"
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    DISCARDED = "discarded"


def round_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


@attrs.define(eq=False)
class Group:
    """VMOs joined by snapshots: while it has two live members, each has a hidden parent."""

    members: list[OVmo] = attrs.Factory(list)


@attrs.define(eq=False)
class IdNode:
    """The oracle's picture of one node of the real tree, as far as attribution goes.

    Content is modelled flat (eager copies); what the seed charges to whom depends on the
    tree's shape and on the attribution id each hidden node carries, so those are modelled
    here: a snapshot hides the cloned node (it keeps its id; the left child inherits it, the
    right child is the clone's), and when a VMO's node leaves the tree its hidden parent goes
    away and hidden ancestors that charged the closed VMO charge the side not walked through
    (the seed's ``RemoveChildLocked``)."""

    user_id: int
    hidden: bool = False
    live: bool = True
    parent: IdNode | None = None
    children: list[IdNode] = attrs.Factory(list)  # hidden: [left, right]

    def chain(self) -> list[tuple[int, bool]]:
        """``(user id, hidden)`` of this node and each ancestor, up to the root."""
        out = []
        cur: IdNode | None = self
        while cur is not None:
            out.append((cur.user_id, cur.hidden))
            cur = cur.parent
        return out


def _id_snapshot(node: IdNode, clone_id: int) -> tuple[IdNode, IdNode]:
    """Hide ``node`` under a snapshot; returns the left child (the cloned VMO's node now) and
    the right one (the clone's)."""
    left = IdNode(user_id=node.user_id, parent=node, children=node.children)
    for c in left.children:
        c.parent = left
    right = IdNode(user_id=clone_id, parent=node)
    node.children = [left, right]
    node.hidden = True
    return left, right


def _id_close(node: IdNode) -> None:
    node.live = False
    cur: IdNode | None = node
    while cur is not None and not cur.live and not cur.children and not cur.hidden:
        parent = cur.parent
        cur.parent = None
        if parent is None:
            return
        parent.children.remove(cur)
        if not parent.hidden:
            cur = parent
            continue
        child = parent.children[0]
        gone = parent.user_id
        if child.user_id != gone:
            skip, up = gone, parent
            while up.parent is not None and up.parent.user_id == gone:
                grand = up.parent
                new_id = grand.children[0].user_id
                if new_id == skip:
                    new_id = grand.children[1].user_id
                grand.user_id = new_id
                skip, up = new_id, grand
        above = parent.parent
        if above is not None:
            above.children[above.children.index(parent)] = child
        child.parent = above
        parent.children = []
        parent.parent = None
        return


@attrs.define(eq=False)
class OPin:
    holder: OVmo
    base: OVmo
    offset: int
    size: int
    released: bool = False


@attrs.define(eq=False)
class OVmo:
    """The oracle's view of one VMO."""

    koid: int
    store: bytearray  # own bytes (unused for slices)
    resizable: bool = False
    discardable: bool = False
    writable: bool = True
    is_clone: bool = False
    parent_koid: int = 0
    parent: OVmo | None = None
    base: OVmo | None = None  # slices: the non-slice VMO whose store they show
    base_offset: int = 0
    slice_size: int = 0
    group: Group | None = None
    closed: bool = False
    num_children: int = 0
    disc: Disc = Disc.NONE
    lock_count: int = 0
    unlock_seq: int = 0
    committed: set[int] = attrs.Factory(set)  # pages, tracked for discardable VMOs only
    id_node: IdNode | None = None  # None until the oracle adds the VMO

    @property
    def is_slice(self) -> bool:
        return self.base is not None

    def target(self) -> tuple[OVmo, int]:
        """The VMO whose store holds our bytes, and our offset in it."""
        return (self.base, self.base_offset) if self.base is not None else (self, 0)

    @property
    def size(self) -> int:
        return self.slice_size if self.is_slice else len(self.store)

    def content(self) -> bytes:
        t, off = self.target()
        return bytes(t.store[off: off + self.size])

    def write_bytes(self, offset: int, data: bytes) -> None:
        t, off = self.target()
        t.store[off + offset: off + offset + len(data)] = data


class Oracle:
    """The model of one `vmo.Kernel`."""

    def __init__(self) -> None:
        self.vmos: list[OVmo] = []
        self.pins: list[OPin] = []
        self._koids = itertools.count(1)
        self._unlocks = itertools.count(1)

    # ------------------------------------------------------------------ helpers

    def live(self) -> list[OVmo]:
        return [v for v in self.vmos if not v.closed]

    def _node_alive(self, v: OVmo) -> bool:
        """A non-slice VMO's node lives while its handle or a slice of it does."""
        if not v.closed:
            return True
        return any(s.base is v and not s.closed for s in self.vmos)

    def has_cow_parent(self, v: OVmo) -> bool:
        t, _ = v.target()
        if t.group is None:
            return False
        return sum(1 for m in t.group.members if self._node_alive(m)) > 1

    def pinned_pages(self, base: OVmo) -> set[int]:
        out: set[int] = set()
        for p in self.pins:
            if not p.released and p.base is base:
                out.update(range(p.offset // PAGE_SIZE, (p.offset + p.size) // PAGE_SIZE))
        return out

    def _note_committed(self, v: OVmo, first: int, end: int) -> None:
        t, off = v.target()
        if t.discardable:
            t.committed.update(range(first + off // PAGE_SIZE, end + off // PAGE_SIZE))

    @staticmethod
    def _u64_bad(*values: int) -> Status | None:
        for x in values:
            if x < 0 or x >= U64:
                return Status.ERR_OUT_OF_RANGE
        return None

    # ------------------------------------------------------------------ kernel calls

    def create(self, size: int, resizable: bool, discardable: bool) -> tuple[Status | None, OVmo | None]:
        if size < 0 or size > MAX_SIZE:
            return Status.ERR_OUT_OF_RANGE, None
        if resizable and discardable:
            return Status.ERR_NOT_SUPPORTED, None
        v = OVmo(koid=next(self._koids), store=bytearray(round_up(size)), resizable=resizable,
                 discardable=discardable, disc=Disc.NEVER_LOCKED if discardable else Disc.NONE)
        v.id_node = IdNode(user_id=v.koid)
        self.vmos.append(v)
        return None, v

    def reclaim_discardable(self, target: int) -> int:
        freed = 0
        candidates = sorted((v for v in self.vmos
                             if v.discardable and v.disc == Disc.UNLOCKED and not v.closed),
                            key=lambda v: v.unlock_seq)
        for v in candidates:
            if freed >= target:
                break
            if self.pinned_pages(v):
                continue  # a device may be using its pages: never discarded (API.md, pin)
            freed += len(v.committed)
            v.committed.clear()
            v.store[:] = bytes(len(v.store))
            v.disc = Disc.DISCARDED
        return freed

    def dedup_zero_pages(self) -> None:
        for v in self.vmos:
            if v.discardable and not v.closed:
                pinned = self.pinned_pages(v)
                for p in list(v.committed):
                    if p not in pinned and not any(v.store[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]):
                        v.committed.discard(p)

    # ------------------------------------------------------------------ VMO calls

    def _readable(self, v: OVmo) -> Status | None:
        t, _ = v.target()
        if t.disc == Disc.DISCARDED:
            return Status.ERR_NOT_FOUND
        return None

    def read(self, v: OVmo, offset: int, length: int) -> tuple[Status | None, bytes | None]:
        if v.closed:
            return Status.ERR_BAD_HANDLE, None
        if bad := self._u64_bad(length, offset):
            return bad, None
        if offset + length > v.size:
            return Status.ERR_OUT_OF_RANGE, None
        if bad := self._readable(v):
            return bad, None
        return None, v.content()[offset: offset + length]

    def write(self, v: OVmo, offset: int, data: bytes) -> Status | None:
        if v.closed:
            return Status.ERR_BAD_HANDLE
        if bad := self._u64_bad(offset):
            return bad
        if not v.writable:
            return Status.ERR_ACCESS_DENIED
        if offset + len(data) > v.size:
            return Status.ERR_OUT_OF_RANGE
        if not data:
            return self._readable(v)
        if bad := self._readable(v):
            return bad
        v.write_bytes(offset, data)
        self._note_committed(v, offset // PAGE_SIZE, (offset + len(data) - 1) // PAGE_SIZE + 1)
        return None

    def set_size(self, v: OVmo, size: int) -> Status | None:
        if v.closed:
            return Status.ERR_BAD_HANDLE
        if size < 0 or size > MAX_SIZE:
            return Status.ERR_OUT_OF_RANGE
        if not v.resizable:
            return Status.ERR_UNAVAILABLE
        if not v.writable:
            return Status.ERR_ACCESS_DENIED
        new = round_up(size)
        if new < len(v.store) and any(p >= new // PAGE_SIZE for p in self.pinned_pages(v)):
            return Status.ERR_BAD_STATE
        if new < len(v.store):
            del v.store[new:]
        else:
            v.store.extend(bytes(new - len(v.store)))
        return None

    def create_child(self, v: OVmo, kind: str, offset: int, size: int, resizable: bool,
                     no_write: bool) -> tuple[Status | None, OVmo | None]:
        """``kind`` is "snapshot", "aow" (at least on write) or "slice"."""
        if v.closed:
            return Status.ERR_BAD_HANDLE, None
        if bad := self._u64_bad(offset):
            return bad, None
        if size < 0 or size > MAX_SIZE:
            return Status.ERR_OUT_OF_RANGE, None
        size = round_up(size)
        if kind == "slice" and resizable:
            return Status.ERR_INVALID_ARGS, None
        if offset % PAGE_SIZE:
            return Status.ERR_INVALID_ARGS, None
        if offset + size >= U64:
            return Status.ERR_OUT_OF_RANGE, None
        if v.discardable:
            return Status.ERR_NOT_SUPPORTED, None
        t, toff = v.target()
        if kind == "slice":
            if v.resizable:
                return Status.ERR_NOT_SUPPORTED, None
            if offset + size > v.size:
                return Status.ERR_INVALID_ARGS, None
            child = OVmo(koid=next(self._koids), store=bytearray(), writable=v.writable and not no_write,
                         parent_koid=v.koid, parent=v, base=t, base_offset=toff + offset,
                         slice_size=size)
            assert t.id_node is not None
            child.id_node = IdNode(user_id=child.koid, parent=t.id_node)
            t.id_node.children.insert(0, child.id_node)
        else:
            if v.is_slice:
                return Status.ERR_NOT_SUPPORTED, None
            if self.pinned_pages(v):
                return Status.ERR_BAD_STATE, None
            # A snapshot sees the parent's bytes of this moment; past the parent's end, zeros.
            content = v.content()[offset: offset + size]
            store = bytearray(content) + bytearray(size - len(content))
            child = OVmo(koid=next(self._koids), store=store, resizable=resizable,
                         writable=not no_write, is_clone=True, parent_koid=v.koid, parent=v)
            if v.group is None:
                v.group = Group([v])
            child.group = v.group
            v.group.members.append(child)
            assert v.id_node is not None
            v.id_node, child.id_node = _id_snapshot(v.id_node, child.koid)
        v.num_children += 1
        self.vmos.append(child)
        return None, child

    def close(self, v: OVmo) -> Status | None:
        if v.closed:
            return Status.ERR_BAD_HANDLE
        v.closed = True
        if v.id_node is not None:
            _id_close(v.id_node)
        for p in self.pins:
            if p.holder is v:
                p.released = True
        if v.parent is not None and not v.parent.closed:
            v.parent.num_children -= 1
        v.parent = None
        return None

    # ------------------------------------------------------------------ op_range

    def op_range(self, v: OVmo, op: str, offset: int, size: int) -> tuple[Status | None, object]:
        """``op`` is a `vmo.VmoOp` name. Returns (status, result) with result a lock tuple."""
        if v.closed:
            return Status.ERR_BAD_HANDLE, None
        if bad := self._u64_bad(offset, size):
            return bad, None
        if op in ("LOCK", "TRY_LOCK", "UNLOCK"):
            return self._lock_op(v, op, offset, size)
        if op in ("COMMIT", "DECOMMIT", "ZERO") and not v.writable:
            return Status.ERR_ACCESS_DENIED, None
        t, toff = v.target()
        if op == "DECOMMIT":
            if offset > v.size:
                return Status.ERR_OUT_OF_RANGE, None
            length = min(size, v.size - offset)
            if length == 0:
                return None, None
            if self.has_cow_parent(v):
                return Status.ERR_NOT_SUPPORTED, None
            if offset % PAGE_SIZE or length % PAGE_SIZE:
                return Status.ERR_INVALID_ARGS, None
            first = (toff + offset) // PAGE_SIZE
            end = (toff + offset + length) // PAGE_SIZE
            if self.pinned_pages(t) & set(range(first, end)):
                return Status.ERR_BAD_STATE, None
            v.write_bytes(offset, bytes(length))
            t.committed.difference_update(range(first, end))
            return None, None
        if offset + size > v.size:
            return Status.ERR_OUT_OF_RANGE, None
        if size == 0:
            return None, None
        first = offset // PAGE_SIZE
        end = (offset + size + PAGE_SIZE - 1) // PAGE_SIZE
        if op == "COMMIT":
            if bad := self._readable(v):
                return bad, None
            self._note_committed(v, first, end)
        elif op == "ZERO":
            # Nothing checks the discarded state (seed: ZeroPagesLocked): a discarded VMO holds
            # no pages and stays discarded.
            v.write_bytes(offset, bytes(size))
            if t.discardable:
                # Partial pages keep their state: a committed one is zeroed in place, an
                # uncommitted one already reads zero and stays uncommitted. Whole pages are
                # decommitted unless pinned.
                full_first = (offset + PAGE_SIZE - 1) // PAGE_SIZE
                full_end = (offset + size) // PAGE_SIZE
                pinned = self.pinned_pages(t)
                t.committed.difference_update(
                    p for p in range(full_first, full_end) if p not in pinned)
        elif op == "PREFETCH" and (bad := self._readable(v)):
            return bad, None
        return None, None

    def _lock_op(self, v: OVmo, op: str, offset: int, size: int) -> tuple[Status | None, object]:
        if not v.discardable:
            return Status.ERR_NOT_SUPPORTED, None
        if offset != 0 or size != v.size:
            return Status.ERR_OUT_OF_RANGE, None
        if op == "UNLOCK":
            if v.lock_count == 0:
                return Status.ERR_BAD_STATE, None
            v.lock_count -= 1
            if v.lock_count == 0:
                v.disc = Disc.UNLOCKED
                v.unlock_seq = next(self._unlocks)
            return None, None
        discarded = v.disc == Disc.DISCARDED
        if discarded and op == "TRY_LOCK":
            return Status.ERR_UNAVAILABLE, None
        v.lock_count += 1
        v.disc = Disc.LOCKED
        if op == "TRY_LOCK":
            return None, None
        return None, (0, v.size, 0, v.size if discarded else 0)

    # ------------------------------------------------------------------ pins

    def pin(self, v: OVmo, offset: int, size: int, writable: bool) -> tuple[Status | None, OPin | None]:
        if v.closed:
            return Status.ERR_BAD_HANDLE, None
        if bad := self._u64_bad(offset, size):
            return bad, None
        if offset % PAGE_SIZE or size % PAGE_SIZE or size == 0:
            return Status.ERR_INVALID_ARGS, None
        if writable and not v.writable:
            return Status.ERR_ACCESS_DENIED, None
        if offset + size > v.size:
            return Status.ERR_OUT_OF_RANGE, None
        if bad := self._readable(v):
            return bad, None
        t, toff = v.target()
        pin = OPin(holder=v, base=t, offset=toff + offset, size=size)
        self.pins.append(pin)
        self._note_committed(v, offset // PAGE_SIZE, (offset + size) // PAGE_SIZE)
        return None, pin

    def unpin(self, pin: OPin) -> Status | None:
        if pin.released or pin.holder.closed:
            return Status.ERR_BAD_HANDLE
        pin.released = True
        return None
