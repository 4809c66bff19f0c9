"""The per-episode agent loop: groups finish when their own episodes do (not in lockstep), a worker process sends
each group the moment it ends, and a turn cut short by the engine (abort) is resumed with both versions."""

from __future__ import annotations

import asyncio
import time

from envs import Task
from spear_stream.config import load_config
from spear_stream.models import load_tokenizer
from spear_stream.rollout.agent import AgentLoop
from spear_stream.rollout.chat import ChatFormat
from spear_stream.rollout.engine import Generation, SamplingParams

# seeds of the long-tail relay whose episodes have 1, 8 and 13 turns
ONE_TURN, EIGHT_TURNS, THIRTEEN_TURNS = 1, 23, 2


class EchoEngine:
    """Answers every turn correctly (the number is the prompt's last digits) after ``delay_s``; version 3."""

    def __init__(self, fmt: ChatFormat, delay_s: float = 0.002) -> None:
        self.fmt, self.delay_s, self.calls = fmt, delay_s, 0

    async def generate(self, prompt_ids, params, *, affinity=None):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        text = self.fmt.tokenizer.decode(prompt_ids)
        number = text.rsplit(": ", 1)[-1].split("<|im_end|>")[0]
        ids = [*self.fmt.text_ids(number), self.fmt.im_end]
        return Generation(ids, [-0.5] * len(ids), [3] * len(ids), "stop")

    async def close(self):
        pass


def relay_loop(tiny_model_dir, step_ms: float = 10.0) -> AgentLoop:
    fmt = ChatFormat(load_tokenizer(tiny_model_dir))
    params = {"max_turns": 16, "step_ms": step_ms, "step_sigma": 0.0}
    return AgentLoop(fmt, "longtail", params, SamplingParams(8, stop_ids=(fmt.im_end,)), max_seq_len=1024)


def test_groups_finish_with_their_own_episodes_not_in_lockstep(tiny_model_dir):
    loop = relay_loop(tiny_model_dir)
    engine = EchoEngine(loop.fmt)
    finished: dict[int, float] = {}

    async def main() -> None:
        t0 = time.monotonic()

        async def one(seed: int) -> None:
            group = await loop.run_group(Task(task_id=seed, seed=seed), 2, loop.engine_policy(engine))
            finished[seed] = time.monotonic() - t0
            assert all(group.successes) and len(group.rows) == 2

        await asyncio.gather(*(one(s) for s in (THIRTEEN_TURNS, ONE_TURN, EIGHT_TURNS)))

    asyncio.run(main())
    # 10 ms per step: 1 turn ~ 12 ms, 8 turns ~ 100 ms, 13 turns ~ 160 ms; lockstep would end all at ~160 ms
    assert finished[ONE_TURN] < finished[EIGHT_TURNS] < finished[THIRTEEN_TURNS]
    assert finished[ONE_TURN] < 0.4 * finished[THIRTEEN_TURNS]


def test_a_turn_cut_short_is_resumed_with_its_tokens_so_far_and_both_versions(tiny_model_dir):
    loop = relay_loop(tiny_model_dir, step_ms=0.0)
    fmt = loop.fmt
    prompts: list[list[int]] = []
    budgets: list[int] = []

    class AbortingEngine:
        """First call: 2 tokens of the answer under version 0, then abort (a weight update); then the rest."""

        async def generate(self, prompt_ids, params, *, affinity=None):
            prompts.append(list(prompt_ids))
            budgets.append(params.max_new_tokens)
            answer = [
                *fmt.text_ids(fmt.tokenizer.decode(prompt_ids).rsplit(": ", 1)[-1].split("<|im_end|>")[0])
            ]
            answer.append(fmt.im_end)
            if len(prompts) == 1:
                return Generation(answer[:1], [-1.0], [0], "abort")
            return Generation(answer[1:], [-2.0] * (len(answer) - 1), [1] * (len(answer) - 1), "stop")

    group = asyncio.run(
        loop.run_group(Task(task_id=0, seed=ONE_TURN), 1, loop.engine_policy(AbortingEngine()))
    )
    assert group.successes == [True]  # the resumed answer is whole
    assert prompts[1] == prompts[0] + prompts[1][len(prompts[0]) :] and len(prompts[1]) == len(prompts[0]) + 1
    assert budgets == [8, 7]  # the resumed request asks only for what is left of the turn's budget
    (row,) = group.rows
    gen = row["loss_mask"]
    assert row["token_version"][gen].tolist()[0] == 0 and set(row["token_version"][gen].tolist()[1:]) == {1}
    assert row["behavior_logp"][gen].tolist()[0] == -1.0


def test_worker_process_sends_each_group_as_it_ends(tiny_model_dir, tmp_path):
    """The worker's own loop (credits in, groups out over ZeroMQ) with the in-process engine on the tiny model."""
    from spear_stream.config import TransportConfig
    from spear_stream.rollout.main import WorkerProcess
    from spear_stream.transport.receiver import RolloutReceiver

    cfg = load_config(
        None,
        ["--model.path", str(tiny_model_dir), "--env.name", "longtail", "--env.group_size", "2",
         "--env.params", '{"max_turns": 16, "step_ms": 15, "step_sigma": 0}', "--rollout.max_new_tokens", "4",
         "--rollout.max_seq_len", "1024", "--run_dir", str(tmp_path)],
    )  # fmt: skip
    receiver = RolloutReceiver(TransportConfig(), auto_credit=False, vocab_size=None)
    worker = WorkerProcess(cfg, receiver.address, receiver.run_token, worker_id=0)
    arrivals: list[tuple[float, int]] = []

    async def drive() -> None:
        runner = asyncio.create_task(worker.run())
        t0 = time.monotonic()
        while not receiver.workers:
            receiver.poll(0)
            await asyncio.sleep(0.01)
        receiver.grant(0, 6)
        while len(arrivals) < 6:
            for group in receiver.poll(0):
                assert group.group["rows"].batch_size[0] == 2  # one row per episode (chat mode)
                turns = int(group.group["rows", "n_tool_calls"].max())  # the relay counts turns taken
                arrivals.append((time.monotonic() - t0, turns))
            await asyncio.sleep(0.005)
        runner.cancel()

    try:
        asyncio.run(drive())
    finally:
        worker.close()
        receiver.close()
    # six groups of random-length episodes (15 ms per turn) arrive in the order of their length, each when done
    turns = [n for _, n in arrivals]
    assert turns == sorted(turns) and turns[0] < turns[-1], arrivals
    assert arrivals[-1][0] - arrivals[0][0] > 0.015 * (turns[-1] - turns[0]) * 0.5
