"""The one prompt format that SFT, the evaluator and the public stub's arms share."""

from __future__ import annotations

import re

TUTOR_SYSTEM = "You are a careful math tutor."
INSTRUCTION = "Solve step by step, then give the final answer on its own line as 'Answer: <number>'."
USER_TEMPLATE = "Problem: {question}\n\n" + INSTRUCTION

_CALCULATOR = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"\n?####\s*(.+?)\s*$")


def render_chat(system: str, user: str, tokenizer) -> str:
    """The text a model sees before it answers: its chat template, or a plain Problem/Solution layout."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{user}\n\nSolution:\n"


def build_prompt(question: str, tokenizer) -> str:
    return render_chat(TUTOR_SYSTEM, USER_TEMPLATE.format(question=question), tokenizer)


def solution_target(gsm8k_answer: str) -> str:
    """A GSM8K solution as a training target: calculator annotations removed, '#### N' -> 'Answer: N'."""
    text = _CALCULATOR.sub("", gsm8k_answer).strip()
    return _FINAL.sub(lambda m: f"\nAnswer: {m.group(1).replace(',', '')}", text)
