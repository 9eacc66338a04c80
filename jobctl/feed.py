"""EventFeed: the one loop that follows the events table.

Every reader of events goes through it: `jobctl events`, `watch` and `wait`,
`top`, the reports, and `serve`'s stream and replays. It owns the cursor
(the id of the last event read), reads a page at a time after it, keeps to
one tree when asked, and waits on the store's waker between pages. So one
place decides paging, resumption and wake-ups, on both stores.

Ordering contract (the store's, `jobctl.store.base`): event ids are given
in commit order with no gap, so a reader that resumes after the id it saw
last never misses or repeats an event.

A feed kept to a tree (`root_id`, and `ids` below a root) reads the tree's
events by the (root_id, id) index, and the ids of a subtree grow as jobs are
created under it (`model.in_tree`). A listing of a small subtree under a big
tree (one shard of a million; `SMALL_SUBTREE`) reads by job id instead (the
(job_id, id) index): `by_job`, for a read once to the present, not a follow.

Pruned history (`jobctl prune`): prune removes whole trees, so a feed kept to
a tree that still exists never misses one of its events. A feed of every event
reads no hole in the ids but below the low-water mark (`store.pruned_before()`:
events with smaller ids may be gone). A feed that starts at 0 reads what is
kept; one that resumes from a cursor (> 0) older than N - 1 (event N - 1 is one
prune removed) raises PrunedHistory (exit 5, "events before N were pruned") on
its first read, and one that meets a hole a prune made since, before it hands
on an event after it: never a silent gap.

`JobFold` is the optional fold: one job's status and its direct children's
counts, kept in O(1) per event (what `watch` shows and `top` keeps per row).
"""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from jobctl.store.base import Store, Waker

from jobctl import model
from jobctl.progress import fold_event, progress_dict

PAGE = 2000  # events read at a time
SMALL_SUBTREE = 500  # a subtree this small is read by job id (an index), not its whole tree


class EventFeed:
    """Events after a cursor, a page at a time, kept to a tree if asked.

    `read()` gives the next page (possibly empty when the page held only other
    trees' events; `more` then says to read again) and moves the cursor past
    it. `pages()` and iteration read until caught up. `wait(timeout)` blocks
    until the store says something may have changed (a hint: the truth is the
    events after the cursor)."""

    def __init__(
        self,
        store: Store,
        since: int = 0,
        *,
        root_id: str | None = None,
        ids: set[str] | None = None,
        by_job: bool = False,
        page: int = PAGE,
        as_json: bool = False,
        poll_interval: float = 1.0,
    ):
        model.check_since(since)
        self._store = store
        self.cursor = since
        self.root_id = root_id
        self.ids = ids  # the tree's job ids below a root (None: all of root_id's, or every event)
        # read by job id (an index) rather than the whole tree: for a small subtree
        # read once, not followed (jobs created under it later are not in `ids`)
        self.by_job = by_job and ids is not None
        self.page = page
        self.as_json = as_json
        self.poll_interval = poll_interval
        self.more = True  # the last read filled a page: more may follow at once
        self._waker: Waker | None = None
        # a feed of every event: holes in the ids below this id are pruned history it
        # accepts (a feed from 0 reads what is kept); None until its first read
        self._floor: int | None = None if root_id is None and ids is None else -1

    def read(self, until: int | None = None, limit: int | None = None) -> list[dict]:
        """The next page of events after the cursor (up to event `until`, at most
        `limit`), kept to the tree; the cursor moves past what was read."""
        size = self.page if limit is None else min(self.page, limit)
        if until is not None and self.cursor >= until:
            self.more = False
            return []
        if self.by_job:
            assert self.ids is not None
            rows = self._store.events(since=self.cursor, job_ids=sorted(self.ids), limit=size, as_json=self.as_json)
        else:
            rows = self._store.events(since=self.cursor, root_id=self.root_id, limit=size, as_json=self.as_json)
        self.more = len(rows) == size
        if self._floor != -1:
            self._check_pruned(rows)
        if until is not None and rows and rows[-1]["id"] >= until:
            rows = [e for e in rows if e["id"] <= until]
            self.more = False
        if rows:
            self.cursor = rows[-1]["id"]
        if self.ids is None or self.by_job:
            return rows
        return [e for e in rows if model.in_tree(self.ids, e)]

    def _check_pruned(self, rows: list) -> None:
        """PrunedHistory if the feed resumes from a cursor older than the mark (on its
        first read), or reading `rows` after the cursor skips events pruned since (a
        hole in the ids: events of every tree have none otherwise)."""
        if self._floor is None:
            self._floor = check_cursor(self._store, self.cursor)
        if not rows or rows[0]["id"] == self.cursor + 1 and rows[-1]["id"] - rows[0]["id"] + 1 == len(rows):
            return
        before = self.cursor
        for e in rows:
            if e["id"] != before + 1 and e["id"] > self._floor:  # a hole not below the mark read at the start
                mark = self._store.pruned_before()
                if before + 1 < mark:
                    raise model.PrunedHistory(mark, before)
            before = e["id"]

    def pages(self, until: int | None = None) -> Iterator[list[dict]]:
        """Pages (none empty) until caught up, or up to event `until`."""
        while True:
            rows = self.read(until)
            if rows:
                yield rows
            if not self.more:
                return

    def __iter__(self) -> Iterator[dict]:
        for rows in self.pages():
            yield from rows

    def take(self, limit: int | None) -> Iterator[dict]:
        """The events until caught up, at most `limit` of them."""
        if limit is None:
            yield from self
            return
        left = limit
        while left > 0:
            rows = self.read(limit=left if self.by_job else None)
            for e in rows[:left]:
                yield e
            left -= len(rows)
            if not self.more:
                return

    def wait(self, timeout: float) -> bool:
        """Block until the database may have changed (True) or `timeout` seconds pass."""
        if self._waker is None:
            self._waker = self._store.waker(self.poll_interval)
        return self._waker.wait(timeout)

    def listen(self) -> None:
        """Start listening now, so every commit from here on wakes the next wait."""
        if self._waker is None:
            self._waker = self._store.waker(self.poll_interval)

    @property
    def mode(self) -> str:
        """How wake-ups come (the waker's mode), once listening."""
        return self._waker.mode if self._waker is not None else "?"

    def close(self) -> None:
        if self._waker is not None:
            self._waker.close()
            self._waker = None


def check_cursor(store: Store, since: int) -> int:
    """PrunedHistory if a reader of every event resuming after `since` (> 0) would
    read across pruned events: `since` < N - 1, where N is the low-water mark (event
    N - 1 is one prune removed). Returns N (0: nothing pruned). A reader from 0
    reads what is kept."""
    mark = store.pruned_before()
    if 0 < since < mark - 1:
        raise model.PrunedHistory(mark, since)
    return mark


class JobFold:
    """One job's status and its direct children's counts, folded event by event."""

    def __init__(self, job: dict, counts: dict[str, int]):
        self.job = job
        self.counts = counts

    def apply(self, e: Mapping) -> None:
        """Fold one event of the job or of a direct child (others change nothing)."""
        fold_event(self.counts, self.job["id"], e)
        if e["job_id"] == self.job["id"] and e["new_status"] is not None:
            model.enter_status(self.job, e["new_status"], e["at"], e.get("message"))

    @property
    def status(self) -> str:
        return self.job["status"]

    def progress(self) -> dict:
        return progress_dict(self.job["id"], self.job["status"], self.counts)
