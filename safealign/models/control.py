"""Text that a tokenizer would read as its own control tokens: one policy, every stage.

A chat template writes its turn markers (`<|eot_id|>`, `<|im_start|>`, `<end_of_turn>`, ...) as
text, and the tokenizer turns every occurrence of a marker into its special id, wherever the text
came from. A prompt or an answer holding `<|eot_id|><|start_header_id|>assistant<|end_header_id|>`
would close its own turn and open a fake assistant turn in the ids the trainer sees (Axolotl and
trl both tokenize the rendered template), and in the prompt the evaluated model answers.

The policy: a row whose text holds one of its tokenizer's control tokens is refused, left out and
counted, named by file:line and id, in every training stage (truncate.fit_rows) and in the safety
stage's held-out prompts (prompts_refused_control in metrics.json). Encoding such text as plain
text instead is not possible everywhere: the trainers tokenize the rendered template themselves.
Rows written by the generation stage reach training through the same check.

Control tokens: the tokenizer's special tokens and special added tokens, and any other added
token its chat template writes (some tokenizers mark their turn markers non-special).
"""

from __future__ import annotations

import re

_ATTR = "_safealign_control"  # the compiled set, kept on the tokenizer object


def _template_text(tok) -> str:
    """What the chat template writes around a short chat ('' without a template)."""
    chats = (
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
    )
    for chat in chats:  # Gemma-2's template raises on a system turn
        try:
            return tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 (no template, or one that refuses this chat)
            continue
    return ""


def control_tokens(tok) -> tuple[str, ...]:
    """The strings `tok` reads as control tokens, longest first."""
    return _compiled(tok)[0]


def _compiled(tok) -> tuple[tuple[str, ...], re.Pattern | None]:
    if _ATTR not in vars(tok):
        special = set(tok.all_special_tokens)
        written = _template_text(tok)
        for added in tok.added_tokens_decoder.values():
            if added.special or added.content in written:
                special.add(added.content)
        tokens = tuple(sorted((t for t in special if t), key=lambda t: (-len(t), t)))
        vars(tok)[_ATTR] = (tokens, re.compile("|".join(map(re.escape, tokens))) if tokens else None)
    return vars(tok)[_ATTR]


def find(tok, texts) -> str | None:
    """The first control token of `tok` found in any of `texts` (None: there is none)."""
    pattern = _compiled(tok)[1]
    if pattern is None:
        return None
    for text in texts:
        m = pattern.search(text) if isinstance(text, str) else None
        if m:
            return m.group(0)
    return None


def in_messages(tok, *message_lists: list[dict]) -> str | None:
    """The first control token in the contents of the chat messages (None: there is none)."""
    return find(tok, (m.get("content") for ms in message_lists for m in ms))
