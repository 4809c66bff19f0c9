"""Adapter for the real WebShop text environment (princeton-nlp/WebShop's ``web_agent_site``), where a user has it.

It plays ``gym.make('WebAgentTextEnv-v0', observation_mode='text', num_products=None, human_goals=False, ...)``
exactly as verl-agent does (goal index = session: test goals 0-499, train 500 on; observation re-formatted as the
quoted page parts after the instruction; admissible actions from ``get_available_actions()``) behind the same
window prompt, projection and rewards as WebShop-lite: 10 for a purchase with score 1, else 0, the score in
``info.extra["task_score"]``. The real site needs its product data, a pyserini index and spaCy's
``en_core_web_sm`` (docs/environments.md 2.2); without ``web_agent_site`` the constructor raises ImportError.
Not registered by default; ``envs.registry.register("webshop_real", RealWebShopEnv)`` enables it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envs.base import Task
from envs.config_fields import spec
from envs.webshop import WEBSHOP_STYLE, format_available_actions
from envs.window import ProjectedAction, WindowEnv

SEP = " [SEP] "


@dataclass
class RealWebShopParams:
    file_path: str = ""  # items_shuffle_1000.json (or the full set); "" = web_agent_site's default
    attr_path: str = ""  # items_ins_v2_1000.json; "" = web_agent_site's default
    human_goals: bool = False
    n_test_goals: int = spec(500, lo=1)
    max_steps: int = spec(15, lo=1, hi=500)
    history_length: int = spec(2, lo=0, hi=50)
    compact: bool = False


def make_real_webshop(params: RealWebShopParams) -> Any:
    """The real ``WebAgentTextEnv``; a clear ImportError when WebShop is not installed."""
    try:
        import gym
        import web_agent_site.envs  # noqa: F401 - registers WebAgentTextEnv-v0
    except ImportError as exc:
        raise ImportError(
            "RealWebShopEnv needs the real WebShop: the 'web_agent_site' package from princeton-nlp/WebShop "
            "(gym 0.24, Flask, pyserini with its product index, spaCy en_core_web_sm) and its product data; "
            f"importing it failed ({exc}). Install WebShop following its setup.sh, or use env 'webshop' "
            "(WebShop-lite), which needs none of it."
        ) from exc
    kwargs: dict[str, Any] = {
        "observation_mode": "text",
        "num_products": None,
        "human_goals": params.human_goals,
    }
    if params.file_path:
        kwargs["file_path"] = params.file_path
    if params.attr_path:
        kwargs["attr_path"] = params.attr_path
    return gym.make("WebAgentTextEnv-v0", **kwargs)


class RealWebShopEnv(WindowEnv):
    name = "webshop_real"
    Params = RealWebShopParams
    style = WEBSHOP_STYLE
    fallback_chars = 20

    def __init__(self, params: RealWebShopParams | None = None, *, gym_env: Any | None = None) -> None:
        """``gym_env``: an already built WebAgentTextEnv (or a stand-in with the same methods)."""
        super().__init__(params)
        self.gym_env = gym_env if gym_env is not None else make_real_webshop(self.params)
        self._instruction = ""
        self._score = 0.0
        self._bought = False

    def _goal_index(self, task: Task) -> int:
        n_goals = len(self.gym_env.server.goals)
        n_test = min(self.params.n_test_goals, n_goals)
        if task.split == "test" or n_goals == n_test:
            return task.seed % n_test
        return n_test + task.seed % (n_goals - n_test)

    def _new_episode(self, task: Task) -> tuple[str, str]:
        obs, _ = self.gym_env.reset(session=self._goal_index(task))
        parts = obs.split(SEP)
        if len(parts) > 2 and parts[1] == "Instruction:":
            self._instruction = parts[2]
        else:
            self._instruction = self.gym_env.get_instruction_text()
        self._score, self._bought = 0.0, False
        return self._instruction, self._format(obs)

    def _format(self, obs: str) -> str:
        """verl-agent's format_obs: the parts after the instruction, each quoted."""
        parts = obs.split(SEP)
        if self._instruction not in parts:
            return obs
        return SEP.join(f"'{p}'" for p in parts[parts.index(self._instruction) + 1 :])

    def _apply(self, projected: ProjectedAction) -> tuple[str, str]:
        obs, reward, done, _ = self.gym_env.step(projected.action)
        self._score, self._bought = float(reward or 0.0), bool(done)
        return self._format(obs), projected.action

    def _admissible_actions(self) -> list[str]:
        return [] if self._bought else format_available_actions(self.gym_env.get_available_actions())

    def _is_won(self) -> bool:
        return self._bought and self._score == 1.0

    def _is_over(self) -> bool:
        return self._bought

    def _extra(self) -> dict[str, Any]:
        return {"task_score": self._score}

    def close(self) -> None:
        closer = getattr(self.gym_env, "close", None)
        if callable(closer):
            closer()
