"""One prompt format, one encoder: prompt text -> the token ids a model is conditioned on.

Training (``bench.train.data.tokenize_rows``), every generation backend (``generate(...,
prompt_format=)``) and teacher forcing (``bench.teacher_forcing.sequence_kl`` / ``pair_logps``)
call :func:`encode` with the same :class:`PromptFormat`, so a policy is sampled and its KL is
measured on exactly the prompt ids it was trained on.

Rules (they are the training rules, unchanged):

* ``chat_template``: ``True`` = apply the tokenizer's chat template (an error when it has none),
  ``False`` = plain text, ``None`` = the template when the tokenizer has one, else plain text.
  The template is applied to one user message with ``add_generation_prompt=True``.
* BOS / special tokens: plain text is tokenised with the tokenizer's own special tokens
  (``add_special_tokens=True``: e.g. Llama's BOS; GPT-2 adds none); templated text with none
  (``add_special_tokens=False``), because the template writes BOS itself when the model uses one,
  so it is never doubled. An empty encoding becomes ``[bos]`` (``[eos]`` when there is no BOS):
  the first completion token needs a position that predicts it.
* truncation: a prompt longer than ``max_prompt_length`` tokens keeps its LAST
  ``max_prompt_length`` tokens (the end is what the response continues; TRL's rule), so a
  leading BOS is cut with the rest of the start. ``None`` = no limit.

``prompt_format=None`` everywhere means :data:`PLAIN`: plain text, no truncation (what sampling
and KL did before they knew the training format).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


class PromptFormatError(ValueError):
    """The format cannot be applied with this tokenizer (``chat_template=True`` without a template)."""


@dataclass(frozen=True)
class PromptFormat:
    """How prompt text becomes prompt ids (see the module docstring for the rules); a training
    config's is ``TrainConfig.prompt_format()``."""

    chat_template: bool | None = None
    max_prompt_length: int | None = 256

    def uses_template(self, tokenizer: Any) -> bool:
        """``chat_template`` resolved against ``tokenizer`` (``None`` -> whether it has one)."""
        return resolve_chat_template(tokenizer, self.chat_template)

    def truncate(self, ids: Sequence[int]) -> list[int]:
        """Keep the last ``max_prompt_length`` ids (all of them when the limit is ``None``)."""
        if self.max_prompt_length is None or len(ids) <= self.max_prompt_length:
            return list(ids)
        return list(ids[-self.max_prompt_length:])


PLAIN = PromptFormat(chat_template=False, max_prompt_length=None)


def resolve_chat_template(tokenizer: Any, wanted: bool | None) -> bool:
    """Whether the chat template is applied: ``wanted``, or for ``None`` whether the tokenizer has one."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if wanted and not has:
        raise PromptFormatError("chat_template=True but the tokenizer has no chat template; set chat_template "
                                "to null (automatic) or false")
    return has if wanted is None else bool(wanted)


def format_text(tokenizer: Any, prompt_text: str, fmt: PromptFormat | None = None, *,
                system: str | None = None) -> str:
    """The prompt as text, before tokenisation (the chat template applied when the format says so).

    ``system``: a system message (template) or a ``"{system}\\n\\n"`` prefix (plain text)."""
    fmt = fmt or PLAIN
    if not fmt.uses_template(tokenizer):
        return prompt_text if system is None else f"{system}\n\n{prompt_text}"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt_text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer: Any, prompt_text: str, fmt: PromptFormat | None = None, *, system: str | None = None,
           truncate: bool = True) -> list[int]:
    """Prompt ids as training, sampling and KL all see them (``truncate=False``: before the
    ``max_prompt_length`` cut, for callers that count or drop over-long prompts)."""
    fmt = fmt or PLAIN
    templated = fmt.uses_template(tokenizer)
    ids = list(tokenizer(format_text(tokenizer, prompt_text, fmt, system=system),
                         add_special_tokens=not templated)["input_ids"])
    if not ids:
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return fmt.truncate(ids) if truncate else ids
