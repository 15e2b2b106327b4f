"""The one prompt format that the service (the stub's arms), SFT, RL, rollouts and the evaluator share (stdlib only)."""

from __future__ import annotations

import re

TUTOR_SYSTEM = "You are a careful math tutor."
INSTRUCTION = "Solve step by step, then give the final answer on its own line as 'Answer: <number>'."
USER_TEMPLATE = "Problem: {question}\n\n" + INSTRUCTION

_CALCULATOR = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"\n?####\s*(.+?)\s*$")


def render_chat(system: str, user: str, tokenizer) -> str:
    """The text a model sees before it answers (its chat template, or a plain Problem/Solution layout), less a
    leading BOS that the tokenizer adds by itself.

    One rule for every path: this text is tokenized the tokenizer's default way (`prompt_token_ids`), which is
    what TRL's SFT, DPO, GRPO and RLOO trainers and vLLM do with a text prompt. A Llama-3 template writes
    `<|begin_of_text|>` and its tokenizer adds another: kept in the text, every path would feed `<bos><bos>`.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = f"{system}\n\n{user}\n\nSolution:\n"
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        return text[len(bos) :]
    return text


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS in front of a text by default."""
    return tokenizer.bos_token_id is not None and tokenizer("1")["input_ids"][:1] == [tokenizer.bos_token_id]


def prompt_token_ids(prompts: list[str], tokenizer) -> list[list[int]]:
    """The token ids a model is given for rendered prompts (`render_chat`): the tokenizer's default tokenization,
    the same ids on every path (SFT, DPO, RL, the HF and vLLM engines)."""
    return tokenizer(prompts)["input_ids"]


def build_prompt(question: str, tokenizer) -> str:
    return render_chat(TUTOR_SYSTEM, USER_TEMPLATE.format(question=question), tokenizer)


def solution_target(gsm8k_answer: str) -> str:
    """A GSM8K solution as a training target: calculator annotations removed, '#### N' -> 'Answer: N'."""
    text = _CALCULATOR.sub("", gsm8k_answer).strip()
    return _FINAL.sub(lambda m: f"\nAnswer: {m.group(1).replace(',', '')}", text)


# Word swaps that keep a grade-school problem's meaning (and numbers) intact.
_SYNONYMS = {
    "buys": "purchases",
    "bought": "purchased",
    "buy": "purchase",
    "in total": "altogether",
    "gives": "hands",
    "gave": "handed",
    "each day": "every day",
    "each week": "every week",
    "each month": "every month",
    "each year": "every year",
}
_SYNONYM_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in _SYNONYMS) + r")\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z$\d])")


def paraphrase(question: str) -> str:
    """The same problem in other words, numbers untouched: the question is asked first, then the facts."""

    def swap(match: re.Match) -> str:
        word = _SYNONYMS[match.group(0).lower()]
        return word.capitalize() if match.group(0)[0].isupper() else word

    text = _SYNONYM_RE.sub(swap, question.strip())
    sentences = _SENTENCE_END.split(text)
    if len(sentences) >= 2 and sentences[-1].endswith("?"):
        return f"{sentences[-1]} Here is what we know: {' '.join(sentences[:-1])}"
    return f"Consider the following situation. {text}"
