"""Multi-turn agent rollouts, token-in/token-out (MMSearch-R1, METHODS §4.1; Retrv-R1).

Each prompt gets n trajectories. For up to `max_rounds` rounds every live trajectory samples one
assistant turn; the turn stops at the model's end token, right after a closing action tag
(`</search>`, `</text_search>`, `</answer>`), or at its token budget. The action at the end of the
turn decides what happens next: `<answer>…</answer>` or no action ends the trajectory; a tool action
calls the tool (all calls of a round run concurrently, see `mmr1.tools.ToolRunner`) and its
observation is appended as the next user turn, rendered by the model's own chat template and
tokenised with its images (real image tokens and pixel features).

The context is kept as token ids, never re-tokenised from text: the context of round r+1 is the
context of round r + the sampled ids + the observation ids. Each round prefills it again:

- the vision tower runs once per image in a rollout (prompt images once per prompt, tool images
  once when returned); the prefills reuse the cached image features (`mm_encoder_outputs`),
  deepstack features included for Qwen3-VL;
- round 1 prefills each prompt once and samples its n turns from copies of that cache;
- later rounds prefill each distinct prompt once more, copy its keys/values to its live
  trajectories and prefill only each trajectory's own tokens after the prompt on top of them.

`AgentConfig(share_prompt=False, cache_vision=False)` prefills every trajectory's whole context
with pixel values instead, the plain reference the tests compare the shared path with.

Per trajectory (`Trajectory`): every token id after the prompt (sampled and injected), the response
mask (1 on sampled ids, 0 on every injected one, image tokens included), the sampling log-probs
(0 where the mask is 0), the images in order, turns, tool calls and the finish reason.
`build_agent_batch` turns trajectories into rows for `completion_logprobs` and the GRPO loss.

Observations are bounded twice: the tool's text is cut to `max_observation_chars` before it is tokenised
(a 2-million-word page costs nothing), then to `max_observation_tokens`, and a visible marker says so
(`ToolCall.truncated`, `tool/truncated` in the metrics). An observation that still does not fit the total
budget ends the trajectory as "length" and is counted the same way.

Finish reasons: "answer" (an answer action), "stop" (a turn ended without an action), "turn_length"
(a turn used its whole per-turn budget), "length" (the total budget ran out, while sampling or
because the observation does not fit), "max_rounds" (a tool was requested in the last round; as in
MMSearch-R1 no call is made).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence, Union

import torch

from ..models.forward import rope_positions, unwrap
from ..models.overrides import OVERRIDES_KEY, embed_inputs
from ..tools import IMAGE_MARKER, Tool, ToolResult, ToolRunner, ToolStats, marked_parts, refusal_text
from .batch import Prompt, blank_rows, encode_prompts, vision_batch
from .hf import HFEngine


# --------------------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class ActionTag:
    """An action written as OPEN query CLOSE at the very end of a turn; tool None is the answer. With
    `exact_query` set, only that query is the action (MMSearch-R1's image search is `<search><img></search>`
    and nothing else; the reward does not count any other `<search>` as a search either)."""

    tool: str | None
    open: str
    close: str
    exact_query: str | None = None


MMSEARCH_ACTIONS = (
    ActionTag("image_search", "<search>", "</search>", exact_query="<img>"),
    ActionTag("text_search", "<text_search>", "</text_search>"),
    ActionTag(None, "<answer>", "</answer>"),
)


@dataclass(frozen=True)
class Action:
    kind: str  # "answer", "tool" or "none"
    tool: str | None = None
    query: str | None = None  # the text between the tags, stripped (for image search "<img>")


def parse_action(text: str, actions: Sequence[ActionTag] = MMSEARCH_ACTIONS) -> Action:
    """The action the turn ends with: its last CLOSE tag must end the (right-stripped) text and have
    an OPEN tag before it; the query is the text between the last OPEN and that CLOSE."""
    s = text.rstrip()
    for a in actions:
        if s.endswith(a.close):
            body = s[:-len(a.close)]
            i = body.rfind(a.open)
            if i < 0:
                continue
            query = body[i + len(a.open):].strip()
            if a.exact_query is not None and query != a.exact_query:
                return Action("none")
            return Action("answer", None, query) if a.tool is None else Action("tool", a.tool, query)
    return Action("none")


# ------------------------------------------------------------------------------------- observations

# Paraphrases of MMSearch-R1's follow-up prompts (METHODS §4.2, the paper's Table 3); a recipe passes
# the exact texts through ObservationFormat(follow_up=...).
AFTER_IMAGE_SEARCH = (
    "Please extract the visual element relevant to the user's question from the search results. "
    "Then determine whether a text search is needed: if so, append <text_search>your query here</text_search> "
    "at the end of your response. Reason inside <reason> and </reason> first. If no further search is "
    "needed, give the final answer inside <answer> and </answer>.")
AFTER_TEXT_SEARCH = (
    "Please analyze the search results and the user's question and continue reasoning inside <reason> and "
    "</reason>. If additional knowledge is still required, output 'Unable to answer due to lack of relevant "
    "information' as the answer. Otherwise give a concise final answer inside <answer> and </answer>.")


@dataclass(frozen=True)
class ObservationFormat:
    """The user text of an observation turn (MMSearch-R1 style by default, METHODS §4.1 step 5).

    `template` wraps a successful result ({result}, {question}, {follow_up}: `follow_up[tool]`, or
    "" for a tool not listed); `templates[tool]` replaces it for one tool (Retrv-R1's inspection shows
    a candidate, not "Searched results": it passes {"inspect": "{result}"}); `error_template` wraps
    error and refusal texts (MMSearch-R1 passes them raw). The tool's images are placed at its
    IMAGE_MARKERs, else before the text.
    """

    template: str = ("Searched results: <information>{result}</information>\n"
                     "Original user's question: {question}\n{follow_up}")
    error_template: str = "{result}"
    follow_up: Mapping[str, str] = field(default_factory=lambda: {"image_search": AFTER_IMAGE_SEARCH,
                                                                  "text_search": AFTER_TEXT_SEARCH})
    templates: Mapping[str, str] = field(default_factory=dict)  # tool -> its own success template

    def success(self, tool: str, result: str, question: str) -> str:
        return self.templates.get(tool, self.template).format(result=result, question=question,
                                                              follow_up=self.follow_up.get(tool, ""))

    def failure(self, tool: str, text: str, question: str) -> str:
        return self.error_template.format(result=text, question=question)


# ------------------------------------------------------------------------------------------- config


@dataclass
class AgentConfig:
    max_rounds: int = 3  # assistant turns per trajectory (MMSearch-R1 max_gen_round)
    max_turn_tokens: int = 2048  # sampled tokens per turn
    max_total_tokens: int = 8192  # all tokens after the prompt: sampled and injected
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True
    actions: Sequence[ActionTag] = MMSEARCH_ACTIONS
    tool_limits: Mapping[str, int] = field(default_factory=lambda: {"image_search": 1, "text_search": 2})
    tool_rounds: Mapping[str, Sequence[int]] = field(default_factory=lambda: {"image_search": (1,)})
    tool_timeout_s: float = 30.0  # default per-call timeout (a tool's `timeout_s` overrides it)
    max_observation_chars: int = 20_000  # a tool's text is cut to this before it is tokenised
    max_observation_tokens: int = 2048  # ... and to this many tokens after
    tool_threads: int = 16
    observation: ObservationFormat = field(default_factory=ObservationFormat)
    batch_size: int = 64  # trajectories decoded together
    share_prompt: bool = True  # prefill each prompt once per round (False: whole context per row)
    cache_vision: bool = True  # run the vision tower once per image (False: pixel values every prefill)

    def __post_init__(self):
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")
        if self.max_turn_tokens < 1 or self.max_total_tokens < 1:
            raise ValueError("max_turn_tokens and max_total_tokens must be >= 1")
        if self.max_observation_chars < 1 or self.max_observation_tokens < 1:
            raise ValueError("max_observation_chars and max_observation_tokens must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")


# ------------------------------------------------------------------------------------- trajectories


@dataclass
class Turn:
    round: int  # 1-based
    start: int  # the turn's sampled ids are token_ids[start:end]
    end: int
    text: str  # decoded without end tokens, cut right after a closing action tag
    finish: str  # "stop" (end token or closing tag) or "length" (its budget)
    action: Action
    scripted: bool = False


@dataclass
class ToolCall:
    round: int
    tool: str
    query: str
    status: str  # "ok", "error" (raised, timed out, garbage), "refused" (call limits) or "skipped" (last round)
    error: str | None = None
    latency_s: float = 0.0
    observation: str = ""  # the observation turn's user text
    n_images: int = 0  # images the observation shows
    span: tuple[int, int] | None = None  # where its injected ids sit in token_ids (None: not injected)
    truncated: bool = False  # its result was cut to the observation bounds, or did not fit the budget at all


@dataclass
class _Image:
    """One image of a trajectory: its processor output and (when cached) its vision features."""

    pixel_values: torch.Tensor
    grid: torch.Tensor  # [3]
    pooled: torch.Tensor | None = None
    deepstack: list | None = None


@dataclass
class _PromptState:
    index: int
    ids: list[int]
    mm: list[int]
    positions: torch.Tensor  # [3, P]
    images: list
    vision: list[_Image]
    question: str
    context: Any = None  # what AgentLoop.run(contexts=...) gave for this prompt; passed to tools that take it
    overrides: Any = None  # the prompt's EmbedOverrides (its third element), see models/overrides.py


@dataclass
class Trajectory:
    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)  # everything after the prompt
    response_mask: list[int] = field(default_factory=list)  # 1 sampled, 0 injected
    logprobs: list[float] = field(default_factory=list)  # sampling log-probs; 0.0 where the mask is 0
    mm_token_type_ids: list[int] = field(default_factory=list)  # 1 on image tokens of token_ids
    images: list = field(default_factory=list)  # prompt images then tool images, in context order
    n_prompt_images: int = 0
    turns: list[Turn] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    _prompt: _PromptState | None = field(default=None, repr=False)
    _vision: list[_Image] = field(default_factory=list, repr=False)

    @property
    def text(self) -> str:
        """The assistant turns' texts joined by newlines (what a reward function reads)."""
        return "\n".join(t.text for t in self.turns)

    @property
    def n_sampled(self) -> int:
        return sum(self.response_mask)

    def calls_of(self, tool: str) -> int:
        """Calls made to `tool` (refused and skipped requests excluded)."""
        return sum(c.tool == tool and c.status in ("ok", "error") for c in self.tool_calls)

    def _extend(self, ids: list[int], mask: int, lps: list[float] | None = None, mm: list[int] | None = None):
        self.token_ids.extend(ids)
        self.response_mask.extend([mask] * len(ids))
        self.logprobs.extend(lps if lps is not None else [0.0] * len(ids))
        self.mm_token_type_ids.extend(mm if mm is not None else [0] * len(ids))


# round -> ids/text for every trajectory, or (trajectory, round) -> ids/text/None; see AgentLoop.run
Script = Union[Callable[[Trajectory, int], Union[Sequence[int], str, None]], Mapping[int, Union[Sequence[int], str]]]


@dataclass
class AgentStats:
    rounds: int = 0
    prefill_calls: int = 0  # model forwards that prefill (prompt and extension forwards count apart)
    prompt_prefill_rows: int = 0  # prompt rows prefilled (share_prompt: one per prompt and round)
    context_prefill_rows: int = 0  # rows prefilled with a whole or partial trajectory context
    vision_images: int = 0  # images run through the vision tower
    decode_steps: int = 0


_PLACEHOLDER = "\x1fAGENT_TURN\x1f"
TRUNCATED = " [truncated: {shown:,} of {total:,} characters shown]"


def _question(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        c = m.get("content")
        if isinstance(c, str):
            return c
        return "".join(p.get("text", "") for p in c or [] if p.get("type") == "text")
    return ""


# --------------------------------------------------------------------------------------------- loop


class AgentLoop:
    """Multi-turn rollouts of `lm` with `tools`; see the module docstring."""

    def __init__(self, lm, tools: Sequence[Tool] | Mapping[str, Tool] = (), config: AgentConfig | None = None,
                 *, device=None):
        self.lm = lm
        self.cfg = config or AgentConfig()
        self.engine = HFEngine(lm, device=device)  # end/suppressed tokens and the sampling rule
        self.device = self.engine.device
        self.hf = unwrap(lm.model)
        self.tok = lm.tokenizer
        self.runner = ToolRunner(tools, timeout_s=self.cfg.tool_timeout_s, max_workers=self.cfg.tool_threads)
        self.stats = AgentStats()
        self.image_token_id = self.hf.config.image_token_id
        self.cache_vision = (self.cfg.cache_vision
                             and "mm_encoder_outputs" in inspect.signature(self.hf.model.forward).parameters)
        # Special-token strings must not reach the tokenizer from tool text: they would become control
        # tokens (a stray <|image_pad|> breaks image alignment, a stray <|im_end|> ends the turn early).
        self._specials = sorted({t.content for t in self.tok.added_tokens_decoder.values() if t.special},
                                key=len, reverse=True)
        self._stop = [a.close for a in self.cfg.actions]

    @property
    def tool_stats(self) -> dict[str, ToolStats]:
        return self.runner.stats

    # ------------------------------------------------------------------------------------ public

    @torch.no_grad()
    def run(self, prompts: list[Prompt], *, n: int = 1,
            generator: torch.Generator | list[torch.Generator] | None = None,
            questions: Sequence[str] | None = None, script: Script | None = None,
            contexts: Sequence[Any] | None = None) -> list[list[Trajectory]]:
        """n trajectories per (messages, images) prompt, grouped per prompt, in order.

        `questions` fills {question} in observations (default: the text of the prompt's last user
        message). `contexts` gives one object per prompt that every call of a tool accepting a
        `context` keyword receives (Retrv-R1's inspection looks the index up in its prompt's candidate
        list); other tools never see it. `script` (tests and demos only) supplies a turn's assistant
        token ids instead of sampling them: a mapping round -> ids (or text, tokenised with the model's
        tokenizer) for every trajectory, or a callable (trajectory, round) -> ids | text | None.
        Scripted ids are fed through the same decode loop: they get the model's log-probs, mask 1, and
        the same stop rules and budgets as sampled ids. `generator` may be one per prompt: each trajectory
        then draws from its own stream, one uniform per token it samples, so the result does not depend
        on which other trajectories share a batch (data-parallel ranks sample what one process would).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if questions is not None and len(questions) != len(prompts):
            raise ValueError(f"{len(questions)} questions for {len(prompts)} prompts")
        if contexts is not None and len(contexts) != len(prompts):
            raise ValueError(f"{len(contexts)} contexts for {len(prompts)} prompts")
        if isinstance(generator, list):
            if len(generator) != len(prompts):
                raise ValueError(f"{len(generator)} generators for {len(prompts)} prompts")
            generator = {(i, j): torch.Generator(g.device).manual_seed(g.initial_seed() * 1_000_003 + j)
                         for i, g in enumerate(generator) for j in range(n)}
        cfg = self.cfg
        model = self.lm.model
        was_training = model.training
        model.eval()
        trajs: list[Trajectory] = []
        try:
            states = [self._encode_prompt(i, p, None if questions is None else questions[i],
                                          None if contexts is None else contexts[i])
                      for i, p in enumerate(prompts)]
            trajs = [Trajectory(prompt_index=s.index, sample_index=j, prompt_ids=s.ids, images=list(s.images),
                                n_prompt_images=len(s.images), _prompt=s, _vision=list(s.vision))
                     for s in states for j in range(n)]
            for rnd in range(1, cfg.max_rounds + 1):
                live = [t for t in trajs if t.finish_reason is None]
                limits = []
                for t in list(live):
                    room = cfg.max_total_tokens - len(t.token_ids)
                    if room <= 0:
                        t.finish_reason = "length"
                        live.remove(t)
                    else:
                        limits.append(min(cfg.max_turn_tokens, room))
                if not live:
                    break
                self.stats.rounds += 1
                forced = [self._scripted(script, t, rnd) for t in live]
                for t, lim, f, (ids, lps, fin) in zip(live, limits, forced, self._generate(live, limits, forced,
                                                                                          generator)):
                    self._add_turn(t, rnd, lim, ids, lps, fin, f is not None)
                self._act(live, rnd)
                for t in live:
                    if t.finish_reason is not None:
                        self._release(t._vision[t.n_prompt_images:])
        finally:
            for t in trajs:
                self._release(t._vision)
            if was_training:
                model.train()
        return [trajs[i * n:(i + 1) * n] for i in range(len(prompts))]

    def close(self) -> None:
        self.runner.close()

    @staticmethod
    def _release(images: list[_Image]) -> None:
        """Drop cached vision features nobody will prefill again (they live on the device)."""
        for im in images:
            im.pooled = im.deepstack = None

    # ------------------------------------------------------------------------------- encoding

    def _encode_prompt(self, index: int, prompt: Prompt, question: str | None, context: Any = None) -> _PromptState:
        messages, images = prompt[0], list(prompt[1] or [])
        enc = encode_prompts(self.lm, [(messages, images)], "left")
        ids = enc["input_ids"][0].tolist()
        mm = enc["mm_token_type_ids"][0].tolist()
        vision = self._images(enc.get("pixel_values"), enc.get("image_grid_thw"))
        pos = self._positions(ids, mm, vision)
        return _PromptState(index, ids, mm, pos, images, vision, _question(messages) if question is None else question,
                            context, prompt[2] if len(prompt) > 2 else None)

    def _images(self, pixel_values, grid) -> list[_Image]:
        """Split a processor output per image; run the vision tower once over all of them when caching."""
        if grid is None or len(grid) == 0:
            return []
        sizes = grid.prod(-1).tolist()
        out = [_Image(pv, g) for pv, g in zip(torch.split(pixel_values, sizes), grid)]
        if self.cache_vision:
            feats = self.hf.model.get_image_features(pixel_values.to(self.device), grid.to(self.device),
                                                     return_dict=True)
            deep = getattr(feats, "deepstack_features", None)
            for i, im in enumerate(out):
                im.pooled = feats.pooler_output[i]
                im.deepstack = [d[i] for d in deep] if deep is not None else None
            self.stats.vision_images += len(out)
        return out

    def _vision_kwargs(self, images: list[_Image]) -> dict:
        if not images:
            return {}
        if self.cache_vision:
            image = SimpleNamespace(pooler_output=tuple(im.pooled for im in images))
            if images[0].deepstack is not None:
                image.deepstack_features = [tuple(im.deepstack[k] for im in images)
                                            for k in range(len(images[0].deepstack))]
            return {"mm_encoder_outputs": {"image": image}}
        self.stats.vision_images += len(images)
        return {"pixel_values": torch.cat([im.pixel_values for im in images]).to(self.device),
                "image_grid_thw": torch.stack([im.grid for im in images]).to(self.device)}

    def _positions(self, ids: list[int], mm: list[int], images: list[_Image]) -> torch.Tensor:
        """M-RoPE positions [3, T] of one unpadded context."""
        batch = {"input_ids": torch.tensor([ids]), "mm_token_type_ids": torch.tensor([mm]),
                 "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if images:
            batch["image_grid_thw"] = torch.stack([im.grid for im in images])
        return rope_positions(self.hf, batch)[:, 0]

    def _scripted(self, script, t: Trajectory, rnd: int) -> list[int] | None:
        if script is None:
            return None
        ids = script.get(rnd) if isinstance(script, Mapping) else script(t, rnd)
        if ids is None:
            return None
        if isinstance(ids, str):
            ids = self.tok.encode(ids, add_special_tokens=False)
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError(f"script gave an empty turn for round {rnd}")
        return ids

    # ---------------------------------------------------------------------------------- prefill

    def _left_pad(self, rows: list[list[int]], fill: int) -> torch.Tensor:
        T = max(len(r) for r in rows)
        out = torch.full((len(rows), T), fill, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                out[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
        return out

    def _pad_positions(self, pos: list[torch.Tensor]) -> torch.Tensor:
        T = max(p.shape[1] for p in pos)
        out = torch.zeros(3, len(pos), T, dtype=torch.long)
        for i, p in enumerate(pos):
            if p.shape[1]:
                out[:, i, T - p.shape[1]:] = p
        return out

    def _forward(self, ids, attn, mm, pos, images, cache=None, overrides=None):
        ids = ids.to(self.device)
        kw = self._vision_kwargs(images)
        if overrides is not None and any(o is not None for o in overrides):  # rows' prompt placeholders
            kw["inputs_embeds"] = embed_inputs(self.hf, ids, overrides)
        out = self.hf.model(input_ids=ids, attention_mask=attn.to(self.device),
                            mm_token_type_ids=mm.to(self.device), position_ids=pos.to(self.device),
                            past_key_values=cache, use_cache=True, return_dict=True, **kw)
        self.stats.prefill_calls += 1
        return out

    def _prefill(self, rows: list[Trajectory]):
        """KV cache, next-token logits [R, V], attention mask [R, L] and next position [R] of each row's context."""
        pad = self.engine.pad_id
        full_pos = [torch.cat([t._prompt.positions, self._positions(t.prompt_ids + t.token_ids,
                                                                    t._prompt.mm + t.mm_token_type_ids,
                                                                    t._vision)[:, len(t.prompt_ids):]], 1)
                    if t.token_ids else t._prompt.positions for t in rows]
        next_pos = torch.stack([p.max() + 1 for p in full_pos]).to(self.device)
        if not self.cfg.share_prompt:
            ids = self._left_pad([t.prompt_ids + t.token_ids for t in rows], pad)
            attn = self._left_pad([[1] * (len(t.prompt_ids) + len(t.token_ids)) for t in rows], 0)
            mm = self._left_pad([t._prompt.mm + t.mm_token_type_ids for t in rows], 0)
            out = self._forward(ids, attn, mm, self._pad_positions(full_pos), [im for t in rows for im in t._vision],
                                overrides=[t._prompt.overrides for t in rows])
            self.stats.context_prefill_rows += len(rows)
            return out.past_key_values, self._last_logits(out), attn.to(self.device), next_pos
        # Each distinct prompt once, its keys/values copied to its rows, then each row's own tokens.
        uniq: dict[int, int] = {}
        for t in rows:
            uniq.setdefault(t.prompt_index, len(uniq))
        states = {t.prompt_index: t._prompt for t in rows}
        order = sorted(uniq, key=uniq.get)
        ps = [states[i] for i in order]
        p_attn = self._left_pad([[1] * len(s.ids) for s in ps], 0)
        out = self._forward(self._left_pad([s.ids for s in ps], pad), p_attn, self._left_pad([s.mm for s in ps], 0),
                            self._pad_positions([s.positions for s in ps]), [im for s in ps for im in s.vision],
                            overrides=[s.overrides for s in ps])
        self.stats.prompt_prefill_rows += len(ps)
        idx = torch.tensor([uniq[t.prompt_index] for t in rows], device=self.device)
        cache = out.past_key_values
        cache.batch_select_indices(idx)
        attn = p_attn.to(self.device)[idx]
        n_ext = {len(t.token_ids) > 0 for t in rows}
        if n_ext == {False}:
            return cache, self._last_logits(out)[idx], attn, next_pos
        if n_ext != {True}:
            raise RuntimeError("a prefill mixes rows with and without tokens after the prompt")
        e_attn = self._left_pad([[1] * len(t.token_ids) for t in rows], 0)
        attn = torch.cat([attn, e_attn.to(self.device)], 1)
        out = self._forward(self._left_pad([t.token_ids for t in rows], pad), attn,
                            self._left_pad([t.mm_token_type_ids for t in rows], 0),
                            self._pad_positions([p[:, len(t.prompt_ids):] for t, p in zip(rows, full_pos)]),
                            [im for t in rows for im in t._vision[t.n_prompt_images:]], cache=cache)
        self.stats.context_prefill_rows += len(rows)
        return out.past_key_values, self._last_logits(out), attn, next_pos

    def _last_logits(self, out) -> torch.Tensor:
        return self.hf.lm_head(out.last_hidden_state[:, -1]).float()

    # ----------------------------------------------------------------------------------- decode

    def _generate(self, live: list[Trajectory], limits: list[int], forced: list, generator):
        """One turn per live trajectory: (ids, log-probs, "stop" | "length") each, in order."""
        bs = max(1, self.cfg.batch_size)
        out = []
        for s in range(0, len(live), bs):
            out.extend(self._decode(live[s:s + bs], limits[s:s + bs], forced[s:s + bs], generator))
        return out

    def _decode(self, rows, limits, forced, generator):
        cfg, eng = self.cfg, self.engine
        cache, logits, attn, next_pos = self._prefill(rows)
        R = len(rows)
        tokens: list[list[int]] = [[] for _ in range(R)]
        lps: list[list[float]] = [[] for _ in range(R)]
        finish: list[str | None] = [None] * R
        live = list(range(R))
        max_stop = max((len(s) for s in self._stop), default=0)
        while True:
            u = None
            if cfg.do_sample and isinstance(generator, dict):  # a stream per trajectory, drawn while it samples
                u = torch.cat([torch.rand(1, generator=generator[rows[r].prompt_index, rows[r].sample_index])
                               if finish[r] is None else torch.zeros(1) for r in live]).to(logits.device)
            elif cfg.do_sample:
                u = torch.rand(R, generator=generator, device=generator.device if generator else "cpu")
                u = u[torch.tensor(live)].to(logits.device)
            picked, picked_lp = eng._pick(logits, cfg.temperature, cfg.top_p, cfg.do_sample, u)
            picked, picked_lp = picked.tolist(), picked_lp.tolist()
            f_rows = [i for i, r in enumerate(live) if forced[r] is not None and finish[r] is None]
            if f_rows:  # scripted ids: the same log-prob rule as _pick, on the forced token
                scaled = logits[f_rows] / cfg.temperature if cfg.do_sample else logits[f_rows]
                target = torch.tensor([forced[live[i]][len(tokens[live[i]])] for i in f_rows], device=logits.device)
                f_lp = torch.log_softmax(scaled, -1).gather(-1, target[:, None]).squeeze(-1).tolist()
                for i, t, lp in zip(f_rows, target.tolist(), f_lp):
                    picked[i], picked_lp[i] = t, lp
            for i, r in enumerate(live):
                if finish[r] is not None:
                    continue
                t = picked[i]
                tokens[r].append(t)
                lps[r].append(picked_lp[i])
                if t in eng.end_ids:
                    finish[r] = "stop"
                elif max_stop and any(s in self.tok.decode(tokens[r][-(max_stop + 2):]) for s in self._stop):
                    finish[r] = "stop"
                elif len(tokens[r]) >= limits[r]:
                    finish[r] = "length"
                elif forced[r] is not None and len(tokens[r]) >= len(forced[r]):
                    finish[r] = "stop"  # the script's turn is over
            step = eng.decode_step(live, picked, finish, attn, next_pos, cache)
            if step is None:
                break
            live, attn, next_pos, cache, logits = step
            self.stats.decode_steps += 1
        return list(zip(tokens, lps, finish))

    # ---------------------------------------------------------------------------- turn + action

    def _turn_text(self, ids: list[int]) -> str:
        text = self.tok.decode([t for t in ids if t not in self.engine.end_ids], skip_special_tokens=False)
        cuts = [i + len(s) for s in self._stop if (i := text.find(s)) >= 0]
        return text[:min(cuts)] if cuts else text

    def _add_turn(self, t: Trajectory, rnd: int, limit: int, ids, lps, finish, scripted: bool) -> None:
        start = len(t.token_ids)
        t._extend(ids, 1, lps)
        text = self._turn_text(ids)
        action = parse_action(text, self.cfg.actions) if finish == "stop" else Action("none")
        t.turns.append(Turn(rnd, start, len(t.token_ids), text, finish, action, scripted))
        if finish == "length":
            t.finish_reason = "length" if len(t.token_ids) >= self.cfg.max_total_tokens else "turn_length"
        elif action.kind == "answer":
            t.finish_reason = "answer"
        elif action.kind == "none":
            t.finish_reason = "stop"

    def _refusal(self, t: Trajectory, tool: str, rnd: int) -> str | None:
        cfg = self.cfg
        if tool not in self.runner.tools:
            return "no such tool"
        rounds = cfg.tool_rounds.get(tool)
        if rounds is not None and rnd not in rounds:
            return f"allowed only in round(s) {', '.join(map(str, rounds))}"
        limit = cfg.tool_limits.get(tool)
        if limit is not None and t.calls_of(tool) >= limit:
            return f"at most {limit} call(s) per trajectory"
        return None

    def _act(self, live: list[Trajectory], rnd: int) -> None:
        """Call the tools the round's turns asked for (concurrently) and inject their observations."""
        fmt = self.cfg.observation
        pending: list[tuple[Trajectory, ToolCall]] = []
        todo: list[tuple[Trajectory, ToolCall, str, list]] = []  # (trajectory, call, user text, images)
        for t in live:
            if t.finish_reason is not None:
                continue
            a = t.turns[-1].action
            if rnd == self.cfg.max_rounds:  # MMSearch-R1: a search in the last round ends it, uncalled
                t.tool_calls.append(ToolCall(rnd, a.tool, a.query, "skipped", "last round"))
                t.finish_reason = "max_rounds"
                continue
            why = self._refusal(t, a.tool, rnd)
            if why is not None:
                self.runner.refused(a.tool)
                text = refusal_text(a.tool, why)
                call = ToolCall(rnd, a.tool, a.query, "refused", why)
                t.tool_calls.append(call)
                todo.append((t, call, fmt.failure(a.tool, text, t._prompt.question), []))
            else:
                call = ToolCall(rnd, a.tool, a.query, "ok")
                t.tool_calls.append(call)
                pending.append((t, call))
        outcomes = self.runner.run([(c.tool, c.query, t._prompt.images, t._prompt.context) for t, c in pending])
        for (t, call), o in zip(pending, outcomes):
            call.latency_s = o.latency_s
            if o.ok:
                res: ToolResult = o.result
                text, call.truncated = self.bound_observation(res.text)
                todo.append((t, call, fmt.success(call.tool, text, t._prompt.question), list(res.images)))
            else:
                call.status, call.error = "error", o.error
                todo.append((t, call, fmt.failure(call.tool, o.error_text, t._prompt.question), []))
        self._inject(todo)

    def bound_observation(self, text: str) -> tuple[str, bool]:
        """`text` cut to max_observation_chars, then to max_observation_tokens, with a visible marker when cut."""
        cfg, n_chars, cut = self.cfg, len(text), False
        if n_chars > cfg.max_observation_chars:
            text, cut = text[:cfg.max_observation_chars], True
        ids = self.tok.encode(text, add_special_tokens=False)
        if len(ids) > cfg.max_observation_tokens:
            text, cut = self.tok.decode(ids[:cfg.max_observation_tokens]), True
        if cut:
            text += TRUNCATED.format(shown=len(text), total=n_chars)
        return text, cut

    def _clean(self, text: str) -> str:
        for s in self._specials:
            text = text.replace(s, "")
        return text

    def _observation_text(self, text: str, n_images: int) -> str:
        """The chat-template rendering of an observation user turn, from the end of the assistant's content
        (its closing end token) to the next assistant header."""
        parts = marked_parts(text, n_images)
        msgs = [{"role": "user", "content": [{"type": "text", "text": "?"}]},
                {"role": "assistant", "content": _PLACEHOLDER},
                {"role": "user", "content": parts}]
        rendered = self.lm.adapter.render(self.lm.processor, msgs, add_generation_prompt=True)
        return rendered[rendered.rindex(_PLACEHOLDER) + len(_PLACEHOLDER):]

    def _inject(self, todo: list[tuple[Trajectory, ToolCall, str, list]]) -> None:
        encs = []
        for t, call, text, images in todo:
            text = self._clean(text)
            call.observation, call.n_images = text, len(images)
            if text.count(IMAGE_MARKER) not in (0, len(images)):
                text = text.replace(IMAGE_MARKER, "")  # a marker from the question or template, not the tool
            rendered = self._observation_text(text, len(images))
            last = t.token_ids[-1]
            if last in self.engine.end_ids:  # the turn closed itself: keep its end token, drop the template's
                end = self.tok.convert_ids_to_tokens(last)
                if rendered.startswith(end):
                    rendered = rendered[len(end):]
            kwargs = {"text": [rendered], "return_tensors": "pt"}
            if images:
                kwargs["images"] = images
            encs.append(self.lm.processor(**kwargs))
        # One vision-tower pass for all the round's tool images.
        pv = [e["pixel_values"] for e in encs if e.get("pixel_values") is not None]
        grids = [e["image_grid_thw"] for e in encs if e.get("image_grid_thw") is not None]
        vision = self._images(torch.cat(pv), torch.cat(grids)) if pv else []
        k = 0
        for (t, call, _, images), e in zip(todo, encs):
            ids = e["input_ids"][0].tolist()
            mm = e["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in e else \
                [int(i == self.image_token_id) for i in ids]
            ims = vision[k:k + len(images)]
            k += len(images)
            if len(t.token_ids) + len(ids) >= self.cfg.max_total_tokens:  # no room left for a next turn
                t.finish_reason = "length"
                call.truncated = True  # counted: the model never saw this observation
                continue
            start = len(t.token_ids)
            t._extend(ids, 0, None, mm)
            t.images.extend(images)
            t._vision.extend(ims)
            call.span = (start, len(t.token_ids))


# ------------------------------------------------------------------------------------ training rows


def build_agent_batch(lm, trajectories: Sequence[Trajectory], rewards: Sequence[float] | torch.Tensor | None = None,
                      padding_side: str = "right") -> dict:
    """One row per trajectory for `completion_logprobs` and the GRPO loss; tensors on the CPU.

    Returns the model inputs over the full sequence (prompt + every token after it): input_ids,
    attention_mask, mm_token_type_ids, position_ids, and pixel_values / image_grid_thw of every image
    (prompt images and tool images, in order); `completion_mask` [B, T] (1 on every token after the
    prompt, sampled or injected) and `token_mask` [B, Tc] as `completion_logprobs` expects, so its
    result is [B, Tc] over all response tokens; `loss_mask` [B, Tc] = the response mask (pass it as
    the loss mask: injected tokens never enter the loss); `old_logprobs` [B, Tc] (the sampling
    log-probs, 0 where loss_mask is 0); and with `rewards`, `token_rewards` [B, Tc] holding each
    reward on the row's last sampled token (`reward_index` [B]; -1 for a row with none).
    Agent rows need this flat layout: `build_grouped_batch` cannot carry images in completions.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    if rewards is not None and len(rewards) != len(trajectories):
        raise ValueError(f"{len(rewards)} rewards for {len(trajectories)} trajectories")
    B = len(trajectories)
    T = max(len(t.prompt_ids) + len(t.token_ids) for t in trajectories)
    Tc = max(1, max(len(t.token_ids) for t in trajectories))
    input_ids, attn, mm, cmask, token_mask = blank_rows(lm, B, T, Tc)
    loss_mask = torch.zeros((B, Tc), dtype=torch.long)
    old = torch.zeros((B, Tc), dtype=torch.float32)
    pv, grids = [], []
    reward_index = torch.full((B,), -1, dtype=torch.long)
    for b, t in enumerate(trajectories):
        n_p, n_r = len(t.prompt_ids), len(t.token_ids)
        n = n_p + n_r
        s = 0 if padding_side == "right" else T - n
        input_ids[b, s:s + n] = torch.tensor(t.prompt_ids + t.token_ids, dtype=torch.long)
        attn[b, s:s + n] = 1
        mm[b, s:s + n] = torch.tensor(t._prompt.mm + t.mm_token_type_ids, dtype=torch.long)
        cmask[b, s + n_p:s + n] = 1
        token_mask[b, :n_r] = 1
        loss_mask[b, :n_r] = torch.tensor(t.response_mask, dtype=torch.long)
        old[b, :n_r] = torch.tensor(t.logprobs, dtype=torch.float32)
        sampled = [j for j, m in enumerate(t.response_mask) if m]
        if sampled:
            reward_index[b] = sampled[-1]
        for im in t._vision:
            pv.append(im.pixel_values)
            grids.append(im.grid)
    batch = vision_batch(lm, input_ids, attn, mm, pv, grids)
    batch["completion_mask"] = cmask
    batch["token_mask"] = token_mask
    batch["loss_mask"] = loss_mask
    batch["old_logprobs"] = old
    batch["reward_index"] = reward_index
    if any(t._prompt.overrides is not None for t in trajectories):
        batch[OVERRIDES_KEY] = [t._prompt.overrides for t in trajectories]
    if rewards is not None:
        r = torch.as_tensor(rewards, dtype=torch.float32)
        tr = torch.zeros((B, Tc), dtype=torch.float32)
        rows = torch.nonzero(reward_index >= 0).squeeze(-1)
        tr[rows, reward_index[rows]] = r[rows]
        batch["token_rewards"] = tr
    return batch


__all__ = ["AFTER_IMAGE_SEARCH", "AFTER_TEXT_SEARCH", "Action", "ActionTag", "AgentConfig", "AgentLoop", "AgentStats",
           "MMSEARCH_ACTIONS", "ObservationFormat", "ToolCall", "Trajectory", "Turn", "build_agent_batch",
           "parse_action"]
