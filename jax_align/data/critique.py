"""MM-RLHF's critic prompt (spec §4.2): a preference group rewritten so that each response is judged in its own
user turn and the critique is the assistant's answer.

Conversation k of the rewritten group is::

    user:      <image> + CRITIC_INSTRUCTION + "[Question]: {question}\\n[LMM Response]: {response k}\\n\\n[Evaluation]:"
    assistant: critique k (the record's ``chosen_reason`` / ``rejected_reason``, or ``critiques[k]``)

The critique-based reward model (``run.stage=critique_reward``) trains the LM head on the critique tokens and a
scalar head on the last token of the whole conversation, so the reward is conditioned on the critique. A
response without a critique gets an empty assistant turn and no critique loss (the released code's
``no_critic``). The instruction below is this project's wording of the meaning the spec records; the layout
of the question/response/evaluation fields follows the spec.
"""

from __future__ import annotations

from dataclasses import replace

from jax_align.data.records import IMAGE_PLACEHOLDER, Message, PreferenceGroup

CRITIC_INSTRUCTION = (
    "You are a fair and unbiased evaluator. Judge the answer of a multimodal assistant to the question about "
    "the image for correctness, clarity and completeness, and explain your judgement in detail."
)


def critic_user_turn(question: str, response: str, num_images: int = 1) -> str:
    """The critic's user turn for one response (images first, as the spec's code prepends them)."""
    images = (IMAGE_PLACEHOLDER + "\n") * num_images
    return f"{images}{CRITIC_INSTRUCTION}\n[Question]: {question}\n[LMM Response]: {response}\n\n[Evaluation]:"


def _question(prompt: tuple[Message, ...]) -> tuple[str, int]:
    """The user text of a prompt (placeholders removed) and how many images it holds."""
    texts, n_images = [], 0
    for m in prompt:
        if m.role != "user":
            continue
        n_images += m.content.count(IMAGE_PLACEHOLDER)
        text = " ".join(m.content.replace(IMAGE_PLACEHOLDER, " ").split())
        if text:
            texts.append(text)
    return "\n".join(texts), n_images


def critique_group(group: PreferenceGroup) -> PreferenceGroup:
    """The group rewritten for critique-based reward modelling (see the module docstring)."""
    question, n_images = _question(group.prompt)
    critiques = group.critiques or (None,) * group.num_responses
    contexts = []
    for resp in group.responses:
        answer = "\n".join(m.content for m in resp if m.role == "assistant")
        contexts.append((Message("user", critic_user_turn(question, answer, n_images)),))
    system = tuple(m for m in group.prompt if m.role == "system")
    return replace(
        group,
        prompt=system,
        response_prompts=tuple(contexts),
        responses=tuple((Message("assistant", c or ""),) for c in critiques),
    )


def critique_mask(group: PreferenceGroup) -> list[bool]:
    """Which responses carry a critique (the others get no critique loss)."""
    critiques = group.critiques or (None,) * group.num_responses
    return [bool(c) for c in critiques]
