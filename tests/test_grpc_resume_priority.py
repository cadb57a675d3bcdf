"""Through the real service: under `agent`, a resumed session's turn gets its first token while
another session's long first turn is still prefilling (its chunks yield to the resumed turn);
under `lru` (first come, first served) it waits for that whole prompt."""
import threading
import time

import pytest

from grpc_server_fixture import running_server, server_config
from runtime.client import AgentKVClient, Delta

LONG = list(range(10, 1210))          # 1,200 tokens: ~38 steps of 32-token chunks


def first_token_times(policy: str, data_dir) -> tuple[float, float, float]:
    """(when the long turn started, its first token, the resumed turn's first token), all on
    the client's clock."""
    cfg = server_config(data_dir, policy=policy)
    cfg.engine.max_num_batched_tokens = 32
    with running_server(cfg) as st, AgentKVClient(st.target, timeout=120) as c:
        c.wait_ready()
        with c.session(max_tokens=2) as resumed, c.session(max_tokens=2) as long:
            resumed.run(token_ids=list(range(2000, 2040)), ignore_eos=True)
            resumed.pause("bash", expected_s=0.05)
            times: dict[str, float] = {}

            def run_long():
                times["long_start"] = time.perf_counter()
                for ev in long.generate(token_ids=LONG, ignore_eos=True):
                    if isinstance(ev, Delta) and "long" not in times:
                        times["long"] = time.perf_counter()

            t = threading.Thread(target=run_long)
            t.start()
            while c.get_session(long.id).state != "active":   # its prefill is under way
                time.sleep(0.002)
            time.sleep(0.05)
            resumed.resume()
            for ev in resumed.generate(token_ids=[2100, 2101, 2102], ignore_eos=True):
                if isinstance(ev, Delta):
                    times.setdefault("resumed", time.perf_counter())
            t.join(120)
    return times["long_start"], times["long"], times["resumed"]


@pytest.mark.timeout(300)
def test_a_resumed_turn_goes_ahead_of_a_long_prefill_under_agent_only(tmp_path):
    start, long_first, resumed_first = first_token_times("agent", tmp_path / "agent")
    assert resumed_first < long_first, "agent: the resumed turn waited for the long prompt"
    # the long prompt still finished: it only sat out the resumed turn's steps
    assert long_first - start < 60
    start, long_first, resumed_first = first_token_times("lru", tmp_path / "lru")
    # first come, first served: it waits for (nearly) the whole long prompt
    assert resumed_first - start > 0.5 * (long_first - start), "lru let the resumed turn jump"
