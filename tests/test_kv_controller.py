"""The pause-aware policy carried out on a real engine's tiers, on a fake clock."""
import dataclasses
import threading
import time
from concurrent.futures import Future

import pytest
import torch

from hf_models import save_model
from kvstore.block_pool import chain_hashes
from runtime import Engine, EngineConfig, SamplingParams
from runtime.kv_controller import make_controller
from runtime.next_use_order import NextUseOrder
from sessions.estimator import PauseForecast


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("m") / "model")


def setup(folder, tmp_path, blocks=40, policy="agent"):
    eng = Engine(EngineConfig(model=str(folder), device="cpu", dtype="float32",
                              num_gpu_blocks=blocks, kernel_backend="torch", block_size=16,
                              cpu_cache_gb=0.01, disk_cache_path=str(tmp_path / "kv"),
                              disk_cache_gb=0.05))
    clock = Clock()
    return eng, make_controller(eng, policy, clock=clock), clock


def turn(eng, ctl, sid, seed, n=64):
    """Run one turn of `n` prompt tokens and report its end; returns the token log."""
    prompt = torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    out = eng.generate([prompt], SamplingParams(max_tokens=1, ignore_eos=True))[0]
    log = prompt + out.token_ids
    ctl.turn_end(sid, log)
    return log


def on_gpu(eng, log):
    return [eng.pool.lookup_hash(h) is not None for h in chain_hashes(log, 16, eng.fingerprint)]


def finish_tracked(eng, ctl, sid, g, n=160):
    """Run a turn of `n` random tokens tracked as `sid`'s to its end in the engine, without
    reporting the turn's end; returns its prompt."""
    prompt = torch.randint(3, 512, (n,), generator=g).tolist()
    rid = eng.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
    ctl.track(rid, sid)
    while eng.has_unfinished():
        eng.step()
    return prompt


def settle(eng):
    """Finish every copy, including those that completed copies start (CPU, then disk)."""
    for _ in range(3):
        eng.tiers.transfer.synchronize()
        eng.tiers.poll()


def test_short_pause_stays_pinned_medium_goes_to_cpu_hours_go_to_disk(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path)
    a, b, c = (turn(eng, ctl, s, i) for i, s in enumerate("abc"))
    short = ctl.pause("a", "read", 0.05, False, PauseForecast(0.04, 0.2, "hint"))
    assert short.placement.value == "keep_gpu" and short.insure_cpu
    settle(eng)                                                        # the insurance copy
    ha = chain_hashes(a, 16, eng.fingerprint)
    assert all(eng.pool.ref_count(eng.pool.lookup_hash(h)) == 1 for h in ha)   # pinned
    assert all("cpu" in eng.tiers.locate(h).tiers for h in ha)
    medium = ctl.pause("b", "web_search", 30.0, False, PauseForecast(30.0, 60.0, "hint"))
    assert medium.placement.value in ("write_cpu", "offload_cpu")
    hours = ctl.pause("c", "ask_user", None, True, PauseForecast(3 * 3600, 12 * 3600, "hint"))
    assert hours.placement.value == "spill_disk"
    settle(eng)
    hb, hc = (chain_hashes(x, 16, eng.fingerprint) for x in (b, c))
    assert all("cpu" in eng.tiers.locate(h).tiers for h in hb)
    assert all(eng.tiers.disk.contains(h) for h in hc)
    # the short pause's TTL runs out: the pins are dropped, the blocks stay cached
    clock.t += 1.0
    ctl.tick()
    assert all(eng.pool.ref_count(eng.pool.lookup_hash(h)) == 0
               for h in chain_hashes(a, 16, eng.fingerprint))
    eng.tiers.close()


def two_paused_sessions(eng, ctl, first, second):
    """Two sessions of 3 full computed blocks each, paused in that order ((name, tool, human,
    forecast) each), none of their blocks pinned; returns their token logs."""
    logs = [turn(eng, ctl, name, seed, n=49) for seed, (name, *_) in enumerate((first, second))]
    for name, tool, human, forecast in (first, second):
        ctl.pause(name, tool, None, human, forecast)
    settle(eng)
    for s in ctl.sessions.values():               # let both be evictable
        ctl._unpin(s)
    return logs


def test_under_pressure_the_session_resuming_last_is_evicted_first(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path, blocks=20)
    assert isinstance(eng.pool.order, NextUseOrder)
    # "late" paused first: an LRU order would evict it second; by next use it goes first
    late, soon = two_paused_sessions(
        eng, ctl, ("late", "ask_user", True, PauseForecast(5000.0, 20000.0, "hint")),
        ("soon", "bash", False, PauseForecast(8.0, 20.0, "hint")))
    eng.pool.allocate(eng.pool.num_free_blocks - 3)   # room for 3 blocks only: evicts 3
    assert on_gpu(eng, soon) == [True, True, True]
    assert on_gpu(eng, late) == [False, False, False]
    eng.tiers.close()


def test_a_resumed_session_outlives_a_paused_one_with_no_re_ranking_on_resume(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path, blocks=20)
    # both kept on the GPU; "back" is predicted to be back later, so it ranks to go first
    back, away = two_paused_sessions(
        eng, ctl, ("back", "read", False, PauseForecast(2.0, 6.0, "hint")),
        ("away", "read", False, PauseForecast(0.5, 1.0, "hint")))
    assert on_gpu(eng, back) == on_gpu(eng, away) == [True, True, True]
    heap = len(eng.pool.order._heap)
    clock.t += 0.2
    ctl.resume("back")                            # needed now, before "away" (0.5 s)
    assert len(eng.pool.order._heap) == heap      # nothing re-ranked on the turn's path
    eng.pool.allocate(eng.pool.num_free_blocks - 3)   # room for 3 blocks only: evicts 3
    assert on_gpu(eng, back) == [True, True, True]
    assert on_gpu(eng, away) == [False, False, False]
    eng.tiers.close()


def test_under_pressure_a_session_loses_its_tail_before_its_head(folder, tmp_path):
    # prefix matching stops at the first missing block: evicting a log's head would make its
    # cached tail useless, so among one session's blocks (one prediction) the tail goes first
    eng, ctl, clock = setup(folder, tmp_path, blocks=20)
    log = turn(eng, ctl, "s", 1, n=49)                 # 3 full blocks
    ctl.pause("s", "bash", None, False, PauseForecast(8.0, 20.0, "hint"))
    settle(eng)
    ctl._unpin(ctl.sessions["s"])
    assert on_gpu(eng, log) == [True, True, True] and len(eng.pool.order) == 3
    eng.pool.allocate(eng.pool.num_free_blocks - 2)   # room for 2: one cached block goes
    assert on_gpu(eng, log) == [True, True, False]
    eng.pool.allocate(1)
    assert on_gpu(eng, log) == [True, False, False]
    eng.tiers.close()


def test_prefetch_starts_before_the_predicted_resume(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path)
    log = turn(eng, ctl, "s", 3)
    plan = ctl.pause("s", "web_search", None, False, PauseForecast(30.0, 60.0, "hint"))
    settle(eng)
    hashes = chain_hashes(log, 16, eng.fingerprint)
    assert all("cpu" in eng.tiers.locate(h).tiers for h in hashes)
    ctl._unpin(ctl.sessions["s"])
    assert eng.tiers.evict(hashes, "gpu") == len(hashes)
    assert plan.prefetch_at is not None and plan.prefetch_at < clock.t + 30.0
    clock.t = plan.prefetch_at - 0.01
    ctl.tick()
    settle(eng)
    assert not any(on_gpu(eng, log))
    clock.t = plan.prefetch_at
    ctl.tick()
    settle(eng)
    assert all(on_gpu(eng, log))                  # back before the predicted resume at +30 s
    eng.tiers.close()


def test_prefetched_blocks_stay_pinned_until_the_turn_ends(folder, tmp_path):
    """Blocks a prefetch brings back are held for the turn from the moment they land: left
    cached, the pool evicted them first (the paused session's next use is the furthest)."""
    eng, ctl, clock = setup(folder, tmp_path)
    log = turn(eng, ctl, "s", 3)
    plan = ctl.pause("s", "web_search", None, False, PauseForecast(30.0, 60.0, "hint"))
    settle(eng)
    hashes = chain_hashes(log, 16, eng.fingerprint)
    ctl._unpin(ctl.sessions["s"])
    assert eng.tiers.evict(hashes, "gpu") == len(hashes)
    clock.t = plan.prefetch_at
    ctl.tick()
    settle(eng)
    assert all(on_gpu(eng, log))
    assert sorted(ctl.sessions["s"].pinned) == sorted(hashes)
    assert eng.tiers.evict(hashes, "gpu") == 0            # held: the pool cannot take them
    ctl.resume("s")
    ctl.turn_end("s", log)                                # pins drop at the turn's end
    assert ctl.sessions["s"].pinned == []
    assert eng.tiers.evict(hashes, "gpu") == len(hashes)
    eng.tiers.close()


def test_close_frees_private_blocks_on_every_tier_but_not_shared_ones(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path)
    shared = torch.randint(3, 512, (32,), generator=torch.Generator().manual_seed(9)).tolist()
    logs = {}
    for sid, seed in (("x", 10), ("y", 11)):
        tail = torch.randint(3, 512, (40,), generator=torch.Generator().manual_seed(seed)).tolist()
        out = eng.generate([shared + tail], SamplingParams(max_tokens=1, ignore_eos=True))[0]
        logs[sid] = shared + tail + out.token_ids
        ctl.turn_end(sid, logs[sid])
    ctl.pause("x", "ask_user", None, True, PauseForecast(3 * 3600, 12 * 3600, "hint"))
    settle(eng)
    hx = chain_hashes(logs["x"], 16, eng.fingerprint)
    ctl.close("x")
    eng.tiers.disk.flush()
    assert all(eng.pool.lookup_hash(h) is not None for h in hx[:2])   # shared with y
    assert all(eng.pool.lookup_hash(h) is None for h in hx[2:])
    assert not any(eng.tiers.disk.contains(h) for h in hx[2:])
    eng.tiers.close()


def test_close_while_pinned_releases_every_block(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path)
    logs = [turn(eng, ctl, s, 20 + i) for i, s in enumerate("pq")]
    for sid in "pq":
        plan = ctl.pause(sid, "read", 0.05, False, PauseForecast(0.04, 0.2, "hint"))
        assert plan.placement.value == "keep_gpu"
    ctl.close("p")                       # its pinned blocks are unpinned as nobody's
    ctl.close("q")
    settle(eng)                          # the insurance copies to CPU land ...
    ctl.tick()                           # ... and what they held is evicted everywhere
    assert all(eng.pool.ref_count(b) == 0 for b in range(eng.pool.num_blocks))
    assert not any(any(on_gpu(eng, log)) for log in logs)
    assert not any(eng.tiers.locate(h).tiers for log in logs
                   for h in chain_hashes(log, 16, eng.fingerprint))
    eng.pool.check_invariants()
    eng.tiers.close()


@pytest.mark.timeout(120)     # before pins yielded, the engine preempted this turn forever
def test_pins_of_paused_sessions_yield_to_a_turn_short_of_room(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path, blocks=20)
    soon = turn(eng, ctl, "soon", 30, n=49)       # 3 full blocks each, pinned by their pause
    late = turn(eng, ctl, "late", 31, n=49)
    for sid, f in (("soon", PauseForecast(0.02, 0.1, "hint")),
                   ("late", PauseForecast(0.5, 0.9, "hint"))):
        assert ctl.pause(sid, "read", None, False, f).placement.value == "keep_gpu"
    settle(eng)                  # their insurance copies to CPU land (a copy holds its blocks)
    assert eng.pool.num_free_blocks == 14
    # 250 prompt tokens + 1 sampled need 16 blocks: 2 more than are free, so one session's pins
    # yield, the one predicted back last; nothing running is preempted
    prompt = torch.randint(3, 512, (250,), generator=torch.Generator().manual_seed(32)).tolist()
    out = eng.generate([prompt], SamplingParams(max_tokens=1, ignore_eos=True))[0]
    assert len(out.token_ids) == 1 and eng.stats.preemptions == 0
    assert ctl.pins_reclaimed == 1
    assert ctl.sessions["late"].pinned == [] and len(ctl.sessions["soon"].pinned) == 3
    assert all(eng.pool.ref_count(eng.pool.lookup_hash(h)) == 1
               for h in chain_hashes(soon, 16, eng.fingerprint))
    assert not all(on_gpu(eng, late))             # its blocks were reused for the new turn
    eng.pool.check_invariants()
    eng.tiers.close()


@pytest.mark.timeout(120)     # before, a turn waited forever on the pins of resumed sessions
def test_pins_of_resumed_sessions_yield_to_another_turn_short_of_room(folder, tmp_path):
    """A prefetch pins a session's KV for its coming turn; once resumed, that turn may itself be
    waiting. Another turn short of room must not wait on those pins (nor they on it)."""
    eng, ctl, clock = setup(folder, tmp_path, blocks=20)
    a = turn(eng, ctl, "a", 40, n=49)          # 3 full blocks each, pinned by their pause
    b = turn(eng, ctl, "b", 41, n=49)
    for sid in ("a", "b"):
        assert ctl.pause(sid, "read", None, False,
                         PauseForecast(0.02, 0.1, "hint")).placement.value == "keep_gpu"
        ctl.resume(sid)
    settle(eng)                  # their insurance copies to CPU land (a copy holds its blocks)
    assert ctl.sessions["a"].paused_at is None and ctl.sessions["a"].pinned
    assert eng.pool.num_free_blocks == 14
    prompt = torch.randint(3, 512, (250,), generator=torch.Generator().manual_seed(42)).tolist()
    out = eng.generate([prompt], SamplingParams(max_tokens=1, ignore_eos=True))[0]
    assert len(out.token_ids) == 1 and eng.stats.preemptions == 0
    assert ctl.pins_reclaimed == 1
    assert sorted(len(ctl.sessions[s].pinned) for s in ("a", "b")) == [0, 3]
    eng.pool.check_invariants()
    eng.tiers.close()


def test_a_finished_turn_keeps_its_blocks_before_its_end_is_reported(folder, tmp_path):
    """The engine finishes a session's turn some ms before the session's turn end reaches the
    controller. Meanwhile another request short of room must evict nobody's blocks first,
    not the turn's: the next turn of the session comes right after and would recompute."""
    eng, ctl, clock = setup(folder, tmp_path)
    g = torch.Generator().manual_seed(7)
    mine = finish_tracked(eng, ctl, "a", g)                                # 10 full blocks
    orphan = torch.randint(3, 512, (160,), generator=g).tolist()          # freed after it
    eng.generate([orphan], SamplingParams(max_tokens=1, ignore_eos=True))
    big = torch.randint(3, 512, (30 * 16 - 1,), generator=g).tolist()     # 30 blocks
    eng.generate([big], SamplingParams(max_tokens=1, ignore_eos=True))
    assert all(on_gpu(eng, mine))
    assert not any(on_gpu(eng, orphan))
    assert ctl.sessions["a"].hashes == chain_hashes(mine, 16, eng.fingerprint)
    eng.tiers.close()


def test_a_preempted_turn_keeps_ownership_of_the_blocks_it_computed(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path)
    g = torch.Generator().manual_seed(8)
    mine = torch.randint(3, 512, (161,), generator=g).tolist()
    rid = eng.add_request(mine, SamplingParams(max_tokens=5, ignore_eos=True))
    ctl.track(rid, "a")
    eng.step()                                   # the prompt: 10 full blocks computed
    req = eng.requests[rid]
    eng.scheduler._preempt(req)                  # as the running loop does when room runs out
    want = chain_hashes(mine[:160], 16, eng.fingerprint)
    assert ctl.sessions["a"].hashes == want
    order = eng.pool.order
    assert all(order.next_use(eng.pool.lookup_hash(h)) == clock.t for h in want)
    before = eng.stats.prompt_tokens_computed
    while eng.has_unfinished():                  # it comes back and reuses them
        eng.step()
    assert req.num_preemptions == 1
    assert eng.stats.prompt_tokens_computed - before == 1       # only the last token again
    assert rid not in ctl._requests
    eng.tiers.close()


def test_block_owners_follow_each_turns_log_as_it_grows_and_is_cut(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path)
    g = torch.Generator().manual_seed(9)
    shared = torch.randint(3, 512, (48,), generator=g).tolist()          # 3 blocks
    a = shared + torch.randint(3, 512, (40,), generator=g).tolist()
    b = shared + torch.randint(3, 512, (20,), generator=g).tolist()

    def expect(logs: dict[str, list[int]]) -> None:
        owners, depth = {}, {}
        for sid, log in logs.items():
            for i, h in enumerate(chain_hashes(log, 16, eng.fingerprint)):
                owners.setdefault(h, set()).add(sid)
                depth[h] = i
        assert ctl._owners == owners and ctl._depth == depth

    ctl.turn_end("a", a)
    ctl.turn_end("b", b)
    expect({"a": a, "b": b})
    a = a + torch.randint(3, 512, (50,), generator=g).tolist()           # the next turn grows it
    ctl.turn_end("a", a)
    expect({"a": a, "b": b})
    a = a[:56] + torch.randint(3, 512, (30,), generator=g).tolist()      # a re-render cuts it
    ctl.turn_end("a", a)
    expect({"a": a, "b": b})
    ctl.turn_end("a", shared[:40])                                       # into the shared head
    expect({"a": shared[:40], "b": b})
    ctl.close("b")
    expect({"a": shared[:40]})
    eng.tiers.close()


def test_usage_reports_the_disk_write_queue_in_seconds(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path)
    c = turn(eng, ctl, "c", 7)
    release, put_many = threading.Event(), eng.tiers.disk.put_many

    def held_put(items):          # the disk write completes only once `release` is set
        inner, out = put_many(items), Future()

        def finish():
            release.wait(10)
            out.set_result(inner.result())
        threading.Thread(target=finish, daemon=True).start()
        return out
    eng.tiers.disk.put_many = held_put
    assert ctl.usage().disk_backlog_s == 0.0
    plan = ctl.pause("c", "ask_user", None, True, PauseForecast(3 * 3600, 12 * 3600, "hint"))
    assert plan.placement.value == "spill_disk"
    deadline = time.monotonic() + 10   # the CPU copy lands, then the (held) disk write starts
    while eng.tiers.in_flight_blocks("disk") == 0 and time.monotonic() < deadline:
        eng.tiers.poll()
        time.sleep(0.01)
    queued = eng.tiers.in_flight_blocks("disk")
    assert queued == len(chain_hashes(c, 16, eng.fingerprint))
    assert ctl.usage().disk_backlog_s == pytest.approx(
        ctl.policy.cost.disk_write_s(queued * 16)) and queued > 0
    release.set()
    settle(eng)
    eng.tiers.disk.put_many = put_many
    assert eng.tiers.in_flight_blocks("disk") == 0 and ctl.usage().disk_backlog_s == 0.0
    eng.tiers.close()


@pytest.mark.parametrize("policy,copied", [("agent", True), ("lru", False)])
def test_agent_starts_the_cpu_copy_as_the_turn_ends(folder, tmp_path, policy, copied):
    """Under `agent` every pause writes a CPU copy, so it starts when the engine releases the
    turn, before the pause arrives: a request that then takes every GPU block leaves the
    session's KV on the CPU. A policy without that rule (lru) copies nothing then."""
    eng, ctl, clock = setup(folder, tmp_path, policy=policy)
    mine = finish_tracked(eng, ctl, "a", torch.Generator().manual_seed(9))  # 10 full blocks
    hashes = chain_hashes(mine, 16, eng.fingerprint)
    big = torch.randint(3, 512, (40 * 16 - 1,), generator=torch.Generator().manual_seed(10)
                        ).tolist()                                         # every GPU block
    eng.generate([big], SamplingParams(max_tokens=1, ignore_eos=True))
    settle(eng)
    assert not any(on_gpu(eng, mine))
    on_cpu = [eng.tiers.locate(h) is not None and "cpu" in eng.tiers.locate(h).tiers
              for h in hashes]
    assert on_cpu == [copied] * 10
    eng.tiers.close()


@pytest.mark.parametrize("policy,copied", [("agent", True), ("lru", False)])
def test_agent_copies_a_running_turn_to_the_cpu_and_a_preempted_one_loads_it_back(
        folder, tmp_path, policy, copied):
    """Under `agent` the blocks a running turn has computed go to the CPU between steps (10
    full blocks after its prompt's step). Preempted, and its GPU blocks taken by another
    request, it loads those back at its next admission and recomputes only its last token and
    its output so far; its tokens are those of a run without preemption. lru copies nothing
    while the turn runs, and the turn recomputes its whole prompt."""
    eng, ctl, clock = setup(folder, tmp_path, policy=policy)
    g = torch.Generator().manual_seed(12)
    mine = torch.randint(3, 512, (161,), generator=g).tolist()
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    alone = eng.generate([mine], params)[0].token_ids
    eng.pool.reset_prefix_cache()
    rid = eng.add_request(mine, params)
    ctl.track(rid, "a")
    eng.step()                                   # the prompt: 10 full blocks computed
    eng.step()                                   # one token decoded
    ctl.tick()
    settle(eng)
    hashes = chain_hashes(mine[:160], 16, eng.fingerprint)
    assert [h in eng.tiers._cpu for h in hashes] == [copied] * 10
    req = eng.requests[rid]
    assert eng.scheduler.loader.kept_tokens(req) == (160 if copied else 0)
    eng.scheduler._preempt(req)                  # as the running loop does when room runs out
    assert eng.tiers.evict(hashes, "gpu") == 10  # and another request took its blocks
    before = eng.stats.prompt_tokens_computed
    while eng.has_unfinished():
        eng.step()
        ctl.tick()
    assert req.num_preemptions == 1 and req.output_token_ids == alone
    # its 161 prompt tokens and 2 sampled ones come back: 160 loaded under agent
    assert eng.stats.prompt_tokens_computed - before == (1 if copied else 161)
    assert rid not in ctl._written
    eng.tiers.close()


def test_a_running_turns_copy_waits_for_free_cpu_slots_rather_than_leave_a_gap(folder,
                                                                                 tmp_path):
    """With fewer free CPU slots than the running turn's 10 new blocks (the rest held by
    other copies), none is copied and none counts as sent; once slots are free, the next tick
    copies all 10, from the first block on, so a load after a preemption reaches all of them."""
    eng, ctl, clock = setup(folder, tmp_path, policy="agent")
    g = torch.Generator().manual_seed(31)
    mine = torch.randint(3, 512, (161,), generator=g).tolist()
    rid = eng.add_request(mine, SamplingParams(max_tokens=5, ignore_eos=True))
    ctl.track(rid, "a")
    host = eng.tiers.host
    held = host.allocate(host.num_free - 5)          # 5 free slots for 10 new blocks
    eng.step()                                       # the prompt: 10 full blocks computed
    ctl.tick()
    settle(eng)
    hashes = chain_hashes(mine[:160], 16, eng.fingerprint)
    assert [h in eng.tiers._cpu for h in hashes] == [False] * 10
    assert ctl._written.get(rid, 0) == 0 and host.num_free == 5
    req = eng.requests[rid]
    assert eng.scheduler.loader.kept_tokens(req) == 0
    host.free(held)
    eng.step()                                       # one token decoded
    ctl.tick()
    settle(eng)
    assert [h in eng.tiers._cpu for h in hashes] == [True] * 10
    assert ctl._written[rid] == 10
    assert eng.scheduler.loader.kept_tokens(req) == 160
    while eng.has_unfinished():
        eng.step()
        ctl.tick()
    eng.tiers.close()


@pytest.mark.parametrize("policy", ["agent", "lru"])
def test_agent_shortens_steps_while_a_paused_session_is_likely_back(folder, tmp_path, policy):
    eng, ctl, clock = setup(folder, tmp_path, blocks=64, policy=policy)
    if policy == "agent":
        ctl.policy.config = dataclasses.replace(ctl.policy.config, resume_step_tokens=128)
    turn(eng, ctl, "a", 0)
    ctl.pause("a", "read", None, False, PauseForecast(0.04, 0.2, "learned"))
    clock.t += 0.02                       # 20 ms into a read: likely back within 0.1 s

    def chunks(seed):
        prompt = torch.randint(3, 512, (600,), generator=torch.Generator().manual_seed(seed))
        rid = eng.add_request(prompt.tolist(), SamplingParams(max_tokens=1, ignore_eos=True))
        req, done = eng.requests[rid], []
        while eng.has_unfinished():
            before = req.num_computed_tokens
            eng.step()
            done.append(req.num_computed_tokens - before)
            clock.t += 0.001
        return done

    if policy == "lru":
        assert eng.scheduler.step_cap is None
        assert chunks(9)[0] == 600 and eng.scheduler.short_steps == 0
        return
    assert chunks(9)[:5] == [128, 128, 128, 128, 88]
    assert eng.scheduler.short_steps == 4
    ctl.resume("a")                       # nobody paused: full steps again
    clock.t += 1.0
    assert chunks(10)[0] == 600 and eng.scheduler.short_steps == 4


def test_a_failing_step_cap_leaves_steps_at_the_full_budget(folder, tmp_path, caplog):
    eng, ctl, clock = setup(folder, tmp_path, blocks=64, policy="agent")
    turn(eng, ctl, "a", 0)
    ctl.pause("a", "read", None, False, PauseForecast(0.04, 0.2, "learned"))

    def broken(pauses):
        raise ZeroDivisionError("a policy bug")
    ctl.policy.step_token_cap = broken
    clock.t += 0.02
    prompt = torch.randint(3, 512, (300,), generator=torch.Generator().manual_seed(4)).tolist()
    out = eng.generate([prompt], SamplingParams(max_tokens=2, ignore_eos=True))[0]
    assert len(out.token_ids) == 2 and eng.scheduler.short_steps == 0
    assert "step cap failed" in caplog.text
