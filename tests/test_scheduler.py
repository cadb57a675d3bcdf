"""The scheduler on CPU, without a model: exact block ids, chunk sizes and request states."""
import math

import pytest

from kvstore.block_pool import BlockPool
from runtime.config import SamplingParams
from runtime.prefix_loader import LoadState, Rates
from runtime.request import FinishReason, Request, RequestStatus
from runtime.scheduler import Scheduler, SchedulerConfig

FP = b"fp"


def make(num_blocks=8, budget=8, max_seqs=4, bs=4, prefix=True):
    pool = BlockPool(num_blocks, bs, prefix)
    return Scheduler(SchedulerConfig(budget, max_seqs, bs, 1024), pool, FP), pool


def req(rid, n, start=100, max_tokens=8):
    return Request(rid, list(range(start, start + n)), SamplingParams(max_tokens=max_tokens), 0.0)


def run_step(s, out, token=7):
    """What the engine does after the forward: commit computed tokens, append sampled ones."""
    for sr in out.scheduled:
        s.commit_computed(sr)
        if sr.samples:
            sr.request.append_output(token, None)


def test_chunked_prefill_then_decode_share_steps():
    s, pool = make(budget=8)
    a, b = req("a", 10), req("b", 3, start=200)
    s.add(a)
    s.add(b)
    out = s.schedule()                    # a takes the whole budget: chunk of 8
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 8)]
    assert a.block_ids == [0, 1] and a.status is RequestStatus.RUNNING
    assert b.status is RequestStatus.WAITING
    assert not out.scheduled[0].samples
    run_step(s, out)
    out = s.schedule()                    # a finishes its prompt (2), b prefills (3)
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 2), ("b", 3)]
    assert a.block_ids == [0, 1, 2] and b.block_ids == [3]
    assert all(x.samples for x in out.scheduled)
    run_step(s, out)
    out = s.schedule()                    # both decode one token
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 1), ("b", 1)]
    assert [x.num_computed_before for x in out.scheduled] == [10, 3]
    assert b.block_ids == [3]             # b's 4th token still fits its first block
    run_step(s, out)
    s.schedule()
    assert b.block_ids == [3, 4]          # its 5th token needs a second block


def test_max_num_seqs_caps_running():
    s, _ = make(max_seqs=2, budget=64, num_blocks=16)
    rs = [req(str(i), 2, start=10 * i) for i in range(3)]
    for r in rs:
        s.add(r)
    out = s.schedule()
    assert [x.request.request_id for x in out.scheduled] == ["0", "1"]
    assert rs[2].status is RequestStatus.WAITING


def test_preemption_frees_the_last_request_and_it_recomputes_later():
    s, pool = make(num_blocks=4, budget=16, bs=4)
    a, b = req("a", 8), req("b", 7, start=300)
    s.add(a)
    s.add(b)
    out = s.schedule()
    assert a.block_ids == [0, 1] and b.block_ids == [2, 3]
    run_step(s, out)                      # a: 9 tokens, b: 8 tokens -> each needs a 3rd block
    out = s.schedule()
    assert out.preempted == ["b"]
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 1)]
    assert b.status is RequestStatus.WAITING and b.block_ids == [] and b.num_computed_tokens == 0
    assert b.num_preemptions == 1 and s.waiting[0] is b
    # b's full blocks stayed cached (block 3 was freed first, so it is evicted first)
    assert a.block_ids == [0, 1, 3]
    assert pool.num_cached_blocks == 1 and pool.ref_count(2) == 0
    s.finish(a, FinishReason.STOP)
    out = s.schedule()                    # b comes back and finds its first block cached
    assert [(x.request.request_id, x.num_computed_before) for x in out.scheduled] == [("b", 4)]
    assert b.block_ids[0] == 2
    pool.check_invariants()


def test_prefix_hit_leaves_last_token_to_compute():
    s, pool = make(num_blocks=8, budget=64, bs=4)
    a = req("a", 8)
    s.add(a)
    run_step(s, s.schedule())
    s.finish(a, FinishReason.STOP)
    b = req("b", 8)                       # identical 8-token prompt = 2 full blocks
    s.add(b)
    out = s.schedule()
    # only the first block can be reused: the last token must run to produce logits
    assert b.num_cached_tokens == 4 and out.scheduled[0].num_new_tokens == 4
    assert b.block_ids[0] == 0 and pool.ref_count(0) == 1


def test_finish_releases_every_block():
    s, pool = make(num_blocks=6, budget=64, bs=4)
    a = req("a", 6)
    s.add(a)
    run_step(s, s.schedule())
    s.finish(a, FinishReason.ABORT)
    assert a.status is RequestStatus.FINISHED and a.finish_reason is FinishReason.ABORT
    assert pool.num_free_blocks == 6
    pool.check_invariants()


def test_an_outranking_turn_goes_ahead_of_a_running_prefill():
    """A resumed turn (smaller priority key) arriving while a long first turn is mid-prefill
    takes its whole prompt in the next step; the prefill runs on what is left of the budget."""
    s, pool = make(num_blocks=12, budget=8, bs=4)
    a = Request("a", list(range(100, 120)), SamplingParams(max_tokens=4), 0.0, priority=5.0)
    s.add(a)
    run_step(s, s.schedule())             # a: 8 of 20 prompt tokens, blocks 0 and 1
    assert a.block_ids == [0, 1] and a.num_computed_tokens == 8
    b = Request("b", list(range(300, 303)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    s.add(b)
    out = s.schedule()                    # b's first token: a sits the short step out
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("b", 3)]
    assert b.block_ids == [2] and out.scheduled[0].samples
    assert a.status is RequestStatus.RUNNING and a.block_ids == [0, 1]
    run_step(s, out)
    out = s.schedule()                    # b decodes first (it ranks first), a goes on
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("b", 1), ("a", 7)]
    assert a.block_ids == [0, 1, 3, 4]
    pool.check_invariants()


def test_the_first_token_step_carries_only_what_outranks_the_jumped_prefill():
    """c arrived before the step but ranks after the prefill b jumped: it waits too."""
    s, pool = make(num_blocks=16, budget=8, bs=4)
    a = Request("a", list(range(100, 124)), SamplingParams(max_tokens=4), 0.0, priority=5.0)
    s.add(a)
    run_step(s, s.schedule())
    b = Request("b", list(range(300, 306)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    c = Request("c", list(range(400, 403)), SamplingParams(max_tokens=4), 1.0, priority=9.0)
    s.add(b)
    s.add(c)
    out = s.schedule()                    # b (6, samples): a and c, ranked after a, sit out
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("b", 6)]
    run_step(s, out)
    out = s.schedule()                    # b decodes, a's chunk, c gets nothing of the budget
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("b", 1), ("a", 7)]
    assert c.status is RequestStatus.WAITING
    pool.check_invariants()


def test_fcfs_keeps_a_running_prefill_ahead_of_later_arrivals():
    s, _ = make(num_blocks=12, budget=8, bs=4)
    a, b = req("a", 20), Request("b", [300, 301, 302], SamplingParams(max_tokens=4), 1.0)
    s.add(a)
    run_step(s, s.schedule())
    s.add(b)
    out = s.schedule()                    # a arrived first: its chunk takes the whole budget
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 8)]
    assert b.status is RequestStatus.WAITING


def test_a_yielded_prefill_without_room_waits_with_its_blocks():
    """The outranking turn takes the last free blocks; the yielded prefill cannot grow, is not
    scheduled and keeps what it holds; nobody is preempted for it."""
    s, pool = make(num_blocks=4, budget=8, bs=4)
    a = Request("a", list(range(100, 120)), SamplingParams(max_tokens=4), 0.0, priority=5.0)
    s.add(a)
    run_step(s, s.schedule())             # a holds blocks 0, 1
    b = Request("b", list(range(300, 308)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    s.add(b)
    out = s.schedule()
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("b", 8)]
    assert out.preempted == [] and b.block_ids == [2, 3] and a.block_ids == [0, 1]
    assert a.status is RequestStatus.RUNNING and a.num_computed_tokens == 8
    pool.check_invariants()


def test_an_outranking_turn_takes_the_room_of_a_prefill_it_outranks():
    """The queue's head cannot be admitted and the prefill it outranks holds the blocks it
    needs: the prefill is preempted (its full blocks stay cached until the head takes them) and
    the head runs in the same step."""
    s, pool = make(num_blocks=8, budget=8, bs=4)
    a = Request("a", list(range(100, 124)), SamplingParams(max_tokens=4), 0.0, priority=5.0)
    s.add(a)
    run_step(s, s.schedule())             # a: 8 of 24 tokens in blocks 0, 1
    held = pool.allocate(5)               # held elsewhere (a loader, a copy): block 7 free
    j = Request("j", list(range(300, 308)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    s.add(j)
    out = s.schedule()                    # j needs 2 blocks: 7, and a's last one
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("j", 8)]
    assert out.preempted == ["a"] and j.block_ids == [7, 1]
    assert a.status is RequestStatus.WAITING and a.block_ids == [] and a.num_preemptions == 1
    assert pool.num_cached_blocks == 1 and pool.block_hash(0) is not None  # a's first block
    pool.free(held)
    pool.check_invariants()


def test_nothing_is_preempted_for_a_turn_it_would_not_make_room_for():
    """A running request ranked after the head holds too little of its own (a copy in flight
    holds one of its blocks) to make room: it is not preempted for the head. Only because the
    step would be empty is it preempted (its blocks freed as they can be); the head runs once
    the copy lets go."""
    s, pool = make(num_blocks=8, budget=8, bs=4)
    a = Request("a", list(range(100, 124)), SamplingParams(max_tokens=4), 0.0, priority=5.0)
    s.add(a)
    run_step(s, s.schedule())             # a: 8 of 24 tokens in blocks 0, 1
    held = pool.allocate(6)               # nothing free
    pool.incref([0])                      # a copy of a's first block is in flight
    j = Request("j", list(range(300, 308)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    s.add(j)
    out = s.schedule()                    # j needs 2 blocks, a alone holds 1: no taking room
    assert out.scheduled == [] and out.preempted == ["a"]
    assert a.status is RequestStatus.WAITING and a.num_preemptions == 1
    assert pool.num_cached_blocks == 1 and pool.ref_count(0) == 1
    pool.free([0])                        # the copy is done
    out = s.schedule()
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("j", 8)]
    assert j.block_ids == [1, 0]
    pool.free(held)
    pool.check_invariants()


def test_arrival_order_preempts_nobody_for_a_later_arrival():
    """FCFS: the head of the queue arrived after the running request, which keeps its room."""
    s, pool = make(num_blocks=4, budget=8, bs=4)
    a = req("a", 12)
    s.add(a)
    run_step(s, s.schedule())             # a: 8 of 12 in blocks 0, 1
    held = pool.allocate(1)
    b = Request("b", list(range(300, 312)), SamplingParams(max_tokens=4), 1.0)
    s.add(b)
    out = s.schedule()                    # a's last 4 tokens; b (3 blocks) does not fit
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 4)]
    assert out.preempted == [] and b.status is RequestStatus.WAITING
    pool.free(held)
    pool.check_invariants()


def test_a_prefill_past_its_first_chunk_keeps_its_room():
    """The turn it would make room for outranks it, but it has computed more than one chunk
    (the budget): preempting it would throw that work away. The head waits (nothing ranked
    after it is admitted meanwhile) and runs once the prefill finishes and frees its blocks."""
    s, pool = make(num_blocks=8, budget=8, bs=4)
    a = Request("a", list(range(100, 120)), SamplingParams(max_tokens=1), 0.0, priority=5.0)
    s.add(a)
    run_step(s, s.schedule())             # a: 8 of 20 tokens in blocks 0, 1
    run_step(s, s.schedule())             # a: 16 of 20 in blocks 0-3
    held = pool.allocate(3)               # held elsewhere (4-6): block 7 free
    j = Request("j", list(range(300, 308)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    late = Request("late", list(range(500, 504)), SamplingParams(max_tokens=4), 2.0,
                   priority=6.0)
    s.add(j)
    s.add(late)
    out = s.schedule()                    # j needs 2 blocks, a would lose 16 > 8 tokens
    assert out.preempted == [] and s.preempted_tokens == 0
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 4)]
    assert a.block_ids == [0, 1, 2, 3, 7] and j.status is RequestStatus.WAITING
    run_step(s, out)                      # a samples its one token
    s.finish(a, FinishReason.LENGTH)
    out = s.schedule()
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("j", 8),
                                                                                  ]
    assert j.block_ids == [7, 3] and late.status is RequestStatus.WAITING
    pool.free(held)
    pool.check_invariants()


def two_running_and_no_room():
    """a (priority 6) runs its 14-token prompt, then b (priority 5) its 7 beside a's first
    decode: a has 15 computed in blocks 0-3, b 7 in blocks 4, 5; blocks 6-9 are free. Returns
    the scheduler, the pool, a, b and the second step's output."""
    s, pool = make(num_blocks=10, budget=16, bs=4, max_seqs=4)
    a = Request("a", list(range(100, 114)), SamplingParams(max_tokens=4), 0.0, priority=6.0)
    b = Request("b", list(range(200, 207)), SamplingParams(max_tokens=4), 0.5, priority=5.0)
    s.add(a)
    run_step(s, s.schedule())             # a: 14 of 14 in blocks 0-3
    s.add(b)
    second = s.schedule()
    run_step(s, second)                   # a: 15 computed; b: 7 in blocks 4, 5
    return s, pool, a, b, second


def test_room_is_taken_from_the_victim_with_the_least_computed_work():
    """Two running requests rank after the head: the one that has computed less is preempted,
    though it ranks before the other (the other's four blocks of work survive), and the tokens
    it discarded are counted."""
    s, pool, a, b, second = two_running_and_no_room()
    assert [(x.request.request_id, x.num_new_tokens) for x in second.scheduled] == [("a", 1),
                                                                                     ("b", 7)]
    held = pool.allocate(4)               # blocks 6-9: nothing free
    j = Request("j", list(range(300, 308)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    s.add(j)
    out = s.schedule()
    assert out.preempted == ["b"] and s.preempted_tokens == 7
    assert a.status is RequestStatus.RUNNING and a.block_ids == [0, 1, 2, 3]
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 1),
                                                                                  ("j", 8)]
    assert j.block_ids == [5, 4] and b.status is RequestStatus.WAITING
    pool.free(held)
    pool.check_invariants()


def test_a_step_cap_shortens_prefill_chunks_while_it_is_set():
    s, pool = make(num_blocks=16, budget=8)
    caps = [3]
    s.step_cap = lambda: caps[0]
    a = req("a", 10)
    s.add(a)
    out = s.schedule()                    # capped: a chunk of 3 where the budget allows 8
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 3)]
    assert a.block_ids == [0] and s.short_steps == 1
    run_step(s, out)
    b = req("b", 2, start=300)
    s.add(b)
    out = s.schedule()                    # the cap holds for the queue too: b waits
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 3)]
    assert a.block_ids == [0, 1] and b.status is RequestStatus.WAITING
    run_step(s, out)
    caps[0] = None                        # no resume likely: the full budget again
    out = s.schedule()
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 4),
                                                                                ("b", 2)]
    assert a.block_ids == [0, 1, 2] and b.block_ids == [3]
    assert s.short_steps == 2


def test_a_step_cap_above_the_budget_changes_nothing():
    s, _ = make(num_blocks=16, budget=8)
    s.step_cap = lambda: 100
    a = req("a", 10)
    s.add(a)
    out = s.schedule()
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 8)]
    assert s.short_steps == 0


class RoomLoader:
    """A prefix loader whose one waiting turn needs `want` GPU blocks free to start its load."""

    def __init__(self, pool, want, left_s=math.inf, rates=None, kept=None):
        self.pool, self.want, self.started = pool, want, []
        self.left_s, self.ended = left_s, []
        self.kept = kept or {}            # request id -> computed tokens a lower tier keeps
        self.rates = rates or Rates(prefill_tok_s=1000.0, h2d_GBps=1.0, disk_read_GBps=1.0)

    def ready(self, req, long_step=False):
        if req.request_id in self.started:
            return LoadState.LOADING
        if req.request_id in self.ended:
            return LoadState.READY        # the front that fits loaded, the rest recomputed
        if self.pool.num_free_blocks >= self.want:
            self.started.append(req.request_id)
            return LoadState.LOADING
        return LoadState.NO_ROOM

    def room_wanted(self, req):
        return self.want

    def kept_tokens(self, req):
        return self.kept.get(req.request_id, 0)

    def wait_left_s(self, req):
        return self.left_s

    def room_check_due(self, req):
        return True

    def end_wait(self, req):
        self.ended.append(req.request_id)

    def after_admit(self, req):
        pass

    def forget(self, req):
        pass

    def release_others(self, req):
        pass

    def not_admitted(self, req):
        pass


class KeptLoader(RoomLoader):
    """Nothing to load for anyone; `kept` says what a lower tier keeps of each request."""

    def ready(self, req, long_step=False):
        return LoadState.READY


def test_room_is_taken_from_the_victim_that_loses_the_least():
    """As above, but the CPU tier keeps 12 of a's 15 computed tokens (a resumed turn's context,
    copied as its last turn ended): preempting a loses 3 tokens, b 7, so a goes, though it has
    computed more, and comes back by a load."""
    s, pool, a, b, _ = two_running_and_no_room()
    held = pool.allocate(4)               # blocks 6-9: nothing free
    s.loader = KeptLoader(pool, 0, kept={"a": 12})
    j = Request("j", list(range(300, 308)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    s.add(j)
    out = s.schedule()
    assert out.preempted == ["a"] and s.preempted_tokens == 15
    assert b.status is RequestStatus.RUNNING and b.block_ids == [4, 5]
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("b", 1),
                                                                                  ("j", 8)]
    assert j.block_ids == [3, 2] and a.status is RequestStatus.WAITING
    assert a.block_ids == [] and a.num_computed_tokens == 0
    pool.free(held)
    pool.check_invariants()


def test_a_victim_that_would_lose_more_than_the_cap_is_kept():
    """A decoding turn that computed 38 tokens, none kept below, is past the one-chunk cap (8):
    the head waits. With 36 of them kept on the CPU it would lose 2: it is preempted."""
    for kept, taken in ((0, False), (36, True)):
        s, pool = make(num_blocks=12, budget=8, bs=4, max_seqs=4)
        a = Request("a", list(range(100, 138)), SamplingParams(max_tokens=8), 0.0, priority=6.0)
        s.add(a)
        for _ in range(5):
            run_step(s, s.schedule())     # a: 38 of 38 in blocks 0-9, one token sampled
        held = pool.allocate(pool.num_free_blocks)
        s.loader = KeptLoader(pool, 0, kept={"a": kept})
        j = Request("j", list(range(300, 308)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
        s.add(j)
        out = s.schedule()
        if taken:
            assert out.preempted == ["a"] and [x.request.request_id for x in out.scheduled] == ["j"]
            assert a.status is RequestStatus.WAITING and a.num_preemptions == 1
        else:
            assert out.preempted == [] and [x.request.request_id for x in out.scheduled] == ["a"]
            assert j.status is RequestStatus.WAITING
        pool.free(held)
        pool.check_invariants()


@pytest.mark.parametrize("want, takes", [(3, True), (2, False)])
def test_a_turn_waiting_to_load_takes_room_worth_less_than_the_load(want, takes):
    """A prefill three chunks in (12 tokens computed, past the one-chunk cap of 4) loses its
    room to a turn whose prefix load (`want` blocks of 4 tokens) saves at least that much
    recompute: 12 tokens, yes; 8 tokens, no: the turn waits and the prefill goes on."""
    s, pool = make(num_blocks=10, budget=4, bs=4)
    b = Request("b", list(range(200, 220)), SamplingParams(max_tokens=4), 0.0, priority=5.0)
    s.add(b)
    for _ in range(3):
        run_step(s, s.schedule())         # b: 12 of 20 computed, in blocks 0-2
    assert b.num_computed_tokens == 12 and b.block_ids == [0, 1, 2]
    held = pool.allocate(6)               # blocks 3-8: one block free
    s.loader = RoomLoader(pool, want)
    j = Request("j", list(range(300, 340)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    s.add(j)
    out = s.schedule()
    if takes:
        assert out.preempted == ["b"] and s.preempted_tokens == 12
        assert s.loader.started == ["j"] and not out.scheduled
        assert b.status is RequestStatus.WAITING and pool.num_free_blocks == 4
    else:
        assert out.preempted == [] and s.loader.started == []
        assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("b", 4)]
        assert b.block_ids == [0, 1, 2, 9] and j.status is RequestStatus.WAITING
    pool.free(held)


@pytest.mark.parametrize("left_s, stops", [(0.02, True), (0.1, False)])
def test_a_turn_waiting_to_load_stops_waiting_when_no_room_can_come_in_time(left_s, stops):
    """b (12 of 20 prompt tokens computed, past the victim cap, 4 tokens of output to go)
    holds the room j's load waits for. At 1000 prefill tokens/s and 10 ms a decode step, b
    frees its blocks in 48 ms at best: with 20 ms of its wait left, j stops waiting, and since
    the recompute it would go on to would preempt b for the same room, b (ranked after j) is
    preempted now, past the cap, and j's whole load starts; with 100 ms left, it waits."""
    s, pool = make(num_blocks=10, budget=4, bs=4)
    b = Request("b", list(range(200, 220)), SamplingParams(max_tokens=4), 0.0, priority=5.0)
    s.add(b)
    for _ in range(3):
        run_step(s, s.schedule())
    held = pool.allocate(6)               # blocks 3-8: one block free
    rates = Rates(prefill_tok_s=1000.0, h2d_GBps=1.0, disk_read_GBps=1.0, decode_step_s=0.01)
    s.loader = RoomLoader(pool, 2, left_s=left_s, rates=rates)
    j = Request("j", list(range(300, 340)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    s.add(j)
    out = s.schedule()
    assert s.loader.ended == []
    if stops:
        assert out.preempted == ["b"] and s.preempted_room == 1 and s.preempted_tokens == 12
        assert s.loader.started == ["j"] and not out.scheduled
        assert b.status is RequestStatus.WAITING and pool.num_free_blocks == 4
    else:
        assert out.preempted == [] and s.loader.started == [] and j.status is RequestStatus.WAITING
        assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("b", 4)]
    pool.free(held)


def test_a_turn_that_cannot_take_the_room_in_time_loads_the_front_that_fits():
    """As above with 20 ms of j's wait left, but b outranks j: its room is not j's to take, so
    j stops waiting and goes on with the front of its prefix that fits (here: none, so its
    admission waits for room) while b runs its last prompt chunk into the free block."""
    s, pool = make(num_blocks=10, budget=8, bs=4)
    b = Request("b", list(range(200, 212)), SamplingParams(max_tokens=4), 0.0, priority=1.0)
    s.add(b)
    held = pool.allocate(6)               # blocks 0-5
    run_step(s, s.schedule())             # b: 8 of 12 computed, in blocks 6-7
    held += pool.allocate(1)              # block 8: one block free
    rates = Rates(prefill_tok_s=1000.0, h2d_GBps=1.0, disk_read_GBps=1.0, decode_step_s=0.01)
    s.loader = RoomLoader(pool, 2, left_s=0.02, rates=rates)
    j = Request("j", list(range(300, 340)), SamplingParams(max_tokens=4), 1.0, priority=3.0)
    s.add(j)
    out = s.schedule()
    assert out.preempted == [] and s.preempted_room == 0 and s.loader.started == []
    assert s.loader.ended == ["j"] and j.status is RequestStatus.WAITING and j.block_ids == []
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("b", 4)]
    assert b.block_ids == [6, 7, 9] and pool.num_free_blocks == 0
    pool.free(held)
