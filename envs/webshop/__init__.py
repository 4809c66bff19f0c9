"""WebShop-lite: WebShop's page flow, actions and graded reward on a generated catalog (docs/webshop-lite.md).

verl-agent conventions: window prompt with 2 steps of history, ``search[...]``/``click[...]`` inside
``<action>`` (missing tags: the last 20 characters go to the site, the step is invalid), reward 10 only for a
perfect purchase (score 1), the graded score in ``info.extra["task_score"]``, at most 15 steps. Buying anything
ends the episode. The goal is ``split_goals[seed % len(split_goals)]`` (test: the first 500 shuffled goals).
``RealWebShopEnv`` (envs.webshop.real) drives the real WebShop text env with the same prompt and rewards.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

from envs.base import Task
from envs.config_fields import spec
from envs.webshop.catalog import Catalog, build_catalog
from envs.webshop.expert import expert_command
from envs.webshop.search import BM25
from envs.webshop.site import Site
from envs.window import ProjectedAction, WindowEnv, WindowStyle, format_response

__all__ = ["WEBSHOP_STYLE", "WebShopLiteEnv", "WebShopLiteParams", "format_available_actions"]

WEBSHOP_STYLE = WindowStyle(
    role_line="You are an expert autonomous agent operating in the WebShop e-commerce environment.",
    task_in_first_turn=True,
    task_period=True,
    admissible_format="webshop",
    observation_period=True,
    turn_line="Now it's your turn to take one action for the current step.",
    instruction=(
        "You should first reason step-by-step about the current situation, then think carefully which admissible "
        "action best advances the shopping goal. This reasoning process MUST be enclosed within <think> </think> "
        "tags. \nOnce you've finished your reasoning, you should choose an admissible action for current step and "
        "present it within <action> </action> tags."
    ),
    history_char_limit=13_000,
)


def format_available_actions(available: dict[str, Any]) -> list[str]:
    """verl-agent's format_avail_actions over WebShop's get_available_actions() dict."""
    actions = ["search[<your query>]"] if available["has_search_bar"] else []
    return actions + [f"click[{c}]" for c in available["clickables"]]


@dataclass
class WebShopLiteParams:
    catalog_seed: int = 0
    products_per_type: int = spec(12, lo=1, hi=200, help="catalog size = 30 x this")
    n_test_goals: int = spec(500, lo=1)
    max_steps: int = spec(15, lo=1, hi=500)
    history_length: int = spec(2, lo=0, hi=50)
    compact: bool = False
    expert_noise: float = spec(0.0, lo=0.0, hi=1.0)


@functools.lru_cache(maxsize=8)
def _search_engine(catalog: Catalog) -> tuple[BM25, list[str]]:
    asins = list(catalog.products)
    documents = [
        " ".join([p.title, p.description, *p.features, *(v for vs in p.options.values() for v in vs)])
        for p in catalog.products.values()
    ]
    return BM25(documents), asins


class WebShopLiteEnv(WindowEnv):
    name = "webshop"
    Params = WebShopLiteParams
    style = WEBSHOP_STYLE
    fallback_chars = 20

    def __init__(self, params: WebShopLiteParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.catalog = build_catalog(p.catalog_seed, p.products_per_type, p.n_test_goals)
        self.site: Site | None = None

    def _new_episode(self, task: Task) -> tuple[str, str]:
        goals = self.catalog.split("test" if task.split == "test" else "train")
        goal = goals[task.seed % len(goals)]
        engine, asins = _search_engine(self.catalog)
        self.site = Site(self.catalog, engine, asins, goal)
        return goal.instruction_text, self.site.observation()

    def _apply(self, projected: ProjectedAction) -> tuple[str, str]:
        site = self._require_site()
        site.act(projected.action)
        return site.observation(), projected.action

    def _admissible_actions(self) -> list[str]:
        return format_available_actions(self._require_site().available_actions())

    def _is_won(self) -> bool:
        site = self._require_site()
        return site.done and site.score >= 1.0

    def _is_over(self) -> bool:
        return self._require_site().done

    def _extra(self) -> dict[str, Any]:
        site = self._require_site()
        return {
            "task_score": site.score,
            "page": site.kind,
            **{f"score_{k}": v for k, v in site.score_parts.items()},
        }

    def _require_site(self) -> Site:
        if self.site is None:
            raise RuntimeError("webshop: reset() first")
        return self.site

    def raw_page(self) -> str:
        """The current page as the real WebShop text env shows it (instruction header included)."""
        return self._require_site().raw_text()

    def expert_action(self, rng: random.Random) -> str:
        site = self._require_site()
        if self.params.expert_noise > 0 and rng.random() < self.params.expert_noise:
            return format_response("Let me look around.", rng.choice(self._admissible_actions()))
        command, reasoning = expert_command(site)
        return format_response(reasoning, command)
