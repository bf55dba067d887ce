"""Retrv-R1's Details Inspection Mechanism (METHODS §1.3, §5.4) as a tool of the multi-turn agent loop.

When a turn ends with ``<inspection-index-start>i<inspection-index-end>`` the loop stops generating (the
closing tag is an action tag, `RETRV_ACTIONS`), calls `InspectTool` with the text between the tags and
the prompt's `RerankContext` (``AgentLoop.run(contexts=...)``), and injects the result as the next user
turn, loss mask 0: candidate i's full content, its image as real image tokens plus its text, exactly the
block "full" mode shows inline (`prompts.candidate_block`). Generation then continues in a new assistant
turn. The paper appends the tokens inside the running turn; a user turn is the choice here because it is
how the loop injects every tool result and how the SFT samples (`teacher.cot_sample`) are rendered, so
rollouts and SFT see the same tokens.

Failures never stop a rollout:

- a malformed or out-of-range index (``abc``, ``0``, ``K+1``) gets one clear line,
  ``Invalid inspection: inspection index 'abc' is not a number: write one number from 1 to K.``
  (`reward.inspection_feedback` of `reward.parse_inspection`'s reason), and the model goes on;
- past `retrv.max_inspections` calls the loop refuses with its usual observation,
  ``[inspect refused: at most 5 call(s) per trajectory]``. The limit counts every call the loop made,
  invalid ones included, so a model cannot loop on bad indices; N_ins (`n_inspections`), which the reward
  charges, counts the calls that showed a candidate.

The tool's text is the whole observation: `inspection_format` gives the loop a per-tool template
``"{result}"``, so no "Searched results" wrapper from MMSearch-R1 appears.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..rollout.agent import ActionTag, AgentConfig, ObservationFormat
from ..tools import ToolResult
from .prompts import RerankContext, candidate_block
from .reward import INSPECT_END, INSPECT_START, inspection_feedback, parse_inspection

if TYPE_CHECKING:  # pragma: no cover
    from ..rollout.agent import Trajectory

INSPECT_TOOL = "inspect"
RETRV_ACTIONS = (ActionTag(INSPECT_TOOL, INSPECT_START, INSPECT_END), ActionTag(None, "<answer>", "</answer>"))


class InspectTool:
    """Looks an inspection index up in its prompt's candidate list and returns that candidate's full content.

    ``context`` is the prompt's `RerankContext`; without one the call fails (an error observation), since an
    index means nothing without its list.
    """

    name = INSPECT_TOOL

    def __call__(self, query: str, *, images: list, context: RerankContext | None = None) -> ToolResult:
        if context is None:
            raise ValueError("no candidate list for this prompt: pass contexts= to AgentLoop.run")
        ins = parse_inspection(query, context.k, context.base)
        if not ins.ok:
            return ToolResult(inspection_feedback(ins))
        text, ims = candidate_block(context.candidates[ins.position], ins.index, context.image_root)
        return ToolResult(text, ims)


def inspection_format(base: ObservationFormat | None = None) -> ObservationFormat:
    """`base` (default: the loop's default) with the inspection tool's observation = the tool's text as is."""
    base = base or ObservationFormat()
    return dataclasses.replace(base, templates={**base.templates, INSPECT_TOOL: "{result}"})


def inspection_config(max_inspections: int = 5, *, max_rounds: int | None = None, **kw) -> AgentConfig:
    """An `AgentConfig` for the reranker: inspection + answer actions, at most `max_inspections` served
    calls, in any round. `max_rounds` defaults to max_inspections + 2 (every allowed call, one refused
    one, and the answer turn); other AgentConfig fields pass through `kw`."""
    if max_inspections < 0:
        raise ValueError(f"max_inspections must be >= 0, got {max_inspections}")
    kw.setdefault("observation", inspection_format())
    return AgentConfig(max_rounds=max_rounds or max_inspections + 2, actions=RETRV_ACTIONS,
                       tool_limits={INSPECT_TOOL: max_inspections}, tool_rounds={}, **kw)


def retrv_agent_config(cfg, *, sample: bool = True) -> AgentConfig:
    """`inspection_config` from a `Config`: budgets, timeouts and sampling from agent.* / rollout.*,
    the limit from retrv.max_inspections (agent.max_rounds does not apply: rounds follow the limit)."""
    ag, ro = cfg.agent, cfg.rollout
    return inspection_config(cfg.retrv.max_inspections, max_turn_tokens=ag.max_turn_tokens,
                             max_total_tokens=ag.max_total_tokens, temperature=ro.temperature if sample else 1.0,
                             top_p=ro.top_p if sample else 1.0, do_sample=sample, tool_timeout_s=ag.tool_timeout_s,
                             tool_threads=ag.tool_threads, batch_size=ro.batch_size)


def n_inspections(traj: "Trajectory", k: int, base: int = 1) -> int:
    """N_ins of a trajectory: inspection calls made whose index was valid (a candidate was shown)."""
    return sum(c.tool == INSPECT_TOOL and c.status == "ok" and parse_inspection(c.query, k, base).ok
               for c in traj.tool_calls)


__all__ = ["INSPECT_TOOL", "InspectTool", "RETRV_ACTIONS", "inspection_config", "inspection_format",
           "n_inspections", "retrv_agent_config"]
