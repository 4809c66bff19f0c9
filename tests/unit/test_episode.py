"""The row builder (EpisodeRecorder): tokens, loss mask, behaviour log-probs and versions line up, by hand.

A character-level fake tokenizer makes every id readable: special tokens are 0-2 and character c is ord(c).
"""

from __future__ import annotations

import torch

from envs.base import Observation, StepInfo, StepResult
from spear_stream.rollout.chat import ChatFormat
from spear_stream.rollout.engine import Generation
from spear_stream.rollout.episode import EpisodeRecorder, RowIds
from spear_stream.schema import anchor_key_of

END, START, EOT = 0, 1, 2  # <|endoftext|>, <|im_start|>, <|im_end|>


class CharTokenizer:
    eos_token_id = EOT
    pad_token_id = END

    def get_vocab(self) -> dict[str, int]:
        return {"<|endoftext|>": END, "<|im_start|>": START, "<|im_end|>": EOT}

    def __call__(self, text: str, **_kw) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: list[int], **_kw) -> str:
        return "".join(chr(i) if i > 2 else f"<{i}>" for i in ids)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def message(role: str, content: str) -> list[int]:
    return [START, *ids(role + "\n"), *ids(content), EOT, *ids("\n")]


ASSISTANT = [START, *ids("assistant\n")]
ROW_IDS = RowIds(group_id=7, traj_id=7 * 1024 + 1, task_id=3, env_id=11, worker_id=2)


def step(obs: list[dict], reward: float = 0.0, done: bool = False, valid: bool = True) -> StepResult:
    info = StepInfo(action_valid=valid)
    return StepResult(Observation(obs, text="obs"), reward, terminated=done, truncated=False, info=info)


def rows_of(rec: EpisodeRecorder) -> list:
    return rec.rows(
        outcome_reward=1.0, success=True, n_tool_calls=1, incomplete=False, repetitive=False, unreadable=False
    )


def test_chat_mode_one_row_with_tool_turns_masked_out() -> None:
    rec = EpisodeRecorder(ChatFormat(CharTokenizer()), "chat", max_seq_len=200, ids=ROW_IDS)
    rec.start(Observation([{"role": "user", "content": "hi"}]))
    prompt = message("user", "hi") + ASSISTANT
    assert rec.prompt() == prompt
    # turn 1: two tokens then <|im_end|>, the last one made by the next policy version (a weight swap mid-turn)
    rec.add_turn(Generation([ord("a"), ord("b"), EOT], [-0.5, -0.25, -0.125], [3, 3, 4], "stop"),
                 step([{"role": "tool", "content": "ok"}], reward=0.5))  # fmt: skip
    tool = ids("\n") + message("tool", "ok") + ASSISTANT
    assert rec.prompt() == [*prompt, ord("a"), ord("b"), EOT, *tool]
    rec.add_turn(Generation([ord("c"), EOT], [-1.0, -2.0], [4, 4], "stop"), step([], reward=1.0, done=True))
    assert rec.done
    (row,) = rows_of(rec)
    gen1, gen2 = [ord("a"), ord("b"), EOT], [ord("c"), EOT]
    assert row["tokens"].tolist() == prompt + gen1 + tool + gen2
    n_p, n_t = len(prompt), len(tool)
    assert row["loss_mask"].tolist() == [False] * n_p + [True] * 3 + [False] * n_t + [True] * 2
    assert row["behavior_logp"].tolist() == [0.0] * n_p + [-0.5, -0.25, -0.125] + [0.0] * n_t + [-1.0, -2.0]
    assert row["token_version"].tolist() == [-1] * n_p + [3, 3, 4] + [-1] * n_t + [4, 4]
    assert int(row["prompt_length"]) == n_p and int(row["length"]) == n_p + 3 + n_t + 2
    assert int(row["policy_version"]) == 3  # the oldest version that generated a token of the row
    assert float(row["step_reward"]) == 1.5 and int(row["step_idx"]) == 0
    assert (int(row["group_id"]), int(row["traj_id"]), int(row["worker_id"])) == (7, 7 * 1024 + 1, 2)


def test_window_mode_one_row_per_step_and_a_cut_turn_is_closed() -> None:
    rec = EpisodeRecorder(ChatFormat(CharTokenizer()), "window", max_seq_len=200, ids=ROW_IDS)
    rec.start(Observation([{"role": "user", "content": "s0"}], text="s0"))
    # step 0 hits the token limit (finish "length"): the turn is closed with <|im_end|> as context, flagged overlong
    rec.add_turn(Generation([ord("x"), ord("y")], [-0.125, -0.25], [5, 5], "length"),
                 step([{"role": "user", "content": "s1"}], reward=-0.125, valid=False))  # fmt: skip
    assert rec.prompt() == message("user", "s1") + ASSISTANT  # a fresh prompt, not the grown conversation
    rec.add_turn(
        Generation([ord("z"), EOT], [-0.375, -0.5], [6, 6], "stop"), step([], reward=10.0, done=True)
    )
    first, second = rows_of(rec)
    p0 = message("user", "s0") + ASSISTANT
    assert first["tokens"].tolist() == [*p0, ord("x"), ord("y"), EOT]
    assert first["loss_mask"].tolist() == [False] * len(p0) + [True, True, False]
    assert first["behavior_logp"].tolist() == [0.0] * len(p0) + [-0.125, -0.25, 0.0]
    assert first["token_version"].tolist() == [-1] * len(p0) + [5, 5, -1]
    assert bool(first["overlong"]) and not bool(first["action_valid"]) and bool(first["incomplete"])
    assert float(first["step_reward"]) == -0.125 and int(first["step_idx"]) == 0
    assert second["loss_mask"].tolist() == [False] * len(p0) + [True, True]  # "s1" prompt is as long as "s0"
    assert not bool(second["overlong"]) and bool(second["action_valid"]) and int(second["step_idx"]) == 1
    # every row of a trajectory carries the episode's outcome; the anchor is the raw observation's hash
    assert float(first["outcome_reward"]) == float(second["outcome_reward"]) == 1.0
    # GiGPO's anchor state: the raw text of the observation each row's action was taken in
    assert int(first["anchor_key"]) == anchor_key_of("s0") and int(second["anchor_key"]) == anchor_key_of(
        "obs"
    )


def test_cut_episode_keeps_its_rows_flagged_and_drops_an_unanswered_window_prompt() -> None:
    rec = EpisodeRecorder(ChatFormat(CharTokenizer()), "window", max_seq_len=30, ids=ROW_IDS)
    rec.start(Observation([{"role": "user", "content": "s"}], text="s"))
    assert rec.fits(8) and not rec.fits(100)
    rec.add_turn(
        Generation([ord("a"), EOT], [-1.0, -1.0], [0, 0], "stop"), step([{"role": "user", "content": "t"}])
    )
    rec.cut()
    (row,) = rows_of(rec)  # the second prompt never got a response: no row for it
    assert bool(row["overlong"]) and rec.truncated_by_length
    assert torch.equal(row["loss_mask"][-2:], torch.tensor([True, True]))
