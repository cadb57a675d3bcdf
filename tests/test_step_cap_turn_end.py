"""The agent policy's step cap hears of a session as soon as the engine ends its turn: the
client is between turns from then, and its pause reaches the controller only after the step
planned at that moment (the step a quick tool's next turn arrives in)."""
import dataclasses

import torch

from runtime import SamplingParams
from runtime.step_cap import WAITING_TOOL
from sessions.estimator import PauseForecast
from test_kv_controller import finish_tracked, folder, setup, turn  # noqa: F401 (fixture)

READ = PauseForecast(0.04, 0.2, "learned")       # ~90% back within 0.1 s of its start


def capped(eng, ctl, after_turn_end=True, tokens=128):
    ctl.policy.config = dataclasses.replace(ctl.policy.config, resume_step_tokens=tokens,
                                            resume_step_after_turn_end=after_turn_end)


def first_chunk(eng, clock, seed, n=600):
    """Tokens the first step of a new `n`-token prompt computes (the request then runs out)."""
    prompt = torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    rid = eng.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
    req = eng.requests[rid]
    eng.step()
    got = req.num_computed_tokens
    while eng.has_unfinished():
        eng.step()
    clock.t += 0.02                       # past the controller's 10 ms memo of the cap
    return got


def test_a_session_whose_turn_just_ended_shortens_the_next_steps(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path, blocks=96)
    capped(eng, ctl)
    turn(eng, ctl, "a", 0)
    ctl.pause("a", "read", None, False, READ)         # its last pause: a quick read
    ctl.resume("a")
    clock.t += 1.0
    assert first_chunk(eng, clock, 1) == 600          # nobody paused, nobody between turns
    finish_tracked(eng, ctl, "a", torch.Generator().manual_seed(2))
    s = ctl.sessions["a"]
    assert s.paused_at is None and s.ended_at == clock.t
    clock.t += 0.015                                  # 15 ms after its turn: likely back
    assert first_chunk(eng, clock, 3) == 128
    assert eng.scheduler.short_steps == 4            # 128 x 4 + 88, the clock standing still
    clock.t += 2.0                                    # long past its forecast: no cap
    assert first_chunk(eng, clock, 4) == 600
    eng.tiers.close()


def test_its_next_turn_or_resume_ends_the_count(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path, blocks=96)
    capped(eng, ctl)
    turn(eng, ctl, "a", 0)
    ctl.pause("a", "read", None, False, READ)
    ctl.resume("a")
    finish_tracked(eng, ctl, "a", torch.Generator().manual_seed(2))
    assert ctl.sessions["a"].ended_at is not None
    ctl.track("next-turn", "a")                       # its next turn is on its way in
    assert ctl.sessions["a"].ended_at is None
    clock.t += 0.015
    assert first_chunk(eng, clock, 3) == 600
    finish_tracked(eng, ctl, "a", torch.Generator().manual_seed(5))
    ctl.resume("a")
    assert ctl.sessions["a"].ended_at is None
    clock.t += 0.015
    assert first_chunk(eng, clock, 6) == 600
    eng.tiers.close()


def test_switched_off_only_paused_sessions_count_timed_from_their_pause(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path, blocks=96)
    capped(eng, ctl, after_turn_end=False)
    turn(eng, ctl, "a", 0)
    ctl.pause("a", "read", None, False, READ)
    ctl.resume("a")
    finish_tracked(eng, ctl, "a", torch.Generator().manual_seed(2))
    clock.t += 0.015
    assert first_chunk(eng, clock, 3) == 600          # between turns: not counted
    # a pause that reaches the controller 0.5 s after the turn's end counts from its arrival
    # when switched off, from the turn's end when on
    clock.t += 0.5
    ctl.pause("a", "read", None, False, READ)
    clock.t += 0.015
    assert first_chunk(eng, clock, 4) == 128
    capped(eng, ctl, after_turn_end=True)
    assert first_chunk(eng, clock, 5) == 600
    eng.tiers.close()


def test_a_session_never_paused_uses_how_long_sessions_wait_between_turns(folder, tmp_path):
    eng, ctl, clock = setup(folder, tmp_path, blocks=96)
    capped(eng, ctl)
    finish_tracked(eng, ctl, "b", torch.Generator().manual_seed(2))
    assert ctl.sessions["b"].forecast is None and ctl.sessions["b"].ended_at is not None
    clock.t += 0.015
    # the prior of an unknown wait (a tool's: p50 0.3 s, p90 13.6 s) gives no cap 15 ms in
    assert first_chunk(eng, clock, 3) == 600
    for _ in range(64):                               # clients here come back in ~20 ms
        ctl.policy.estimator.observe(WAITING_TOOL, False, 0.02)
    finish_tracked(eng, ctl, "b", torch.Generator().manual_seed(4))
    clock.t += 0.015                                  # past the cap's 10 ms memo
    assert first_chunk(eng, clock, 5) == 128
    eng.tiers.close()
