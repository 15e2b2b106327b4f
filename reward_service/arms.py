"""The 11 arms of Regime W and the prompts they send. Data served to workers, never code in clients."""

from __future__ import annotations

from shared_schemas.models import ArmSpec, QuestionPrompts, RenderedArmPrompt
from shared_schemas.prompts import paraphrase

FINAL_LINE = "End your solution with a final line of the form 'Answer: <number>'."

WOLFRAM_SYSTEM = (
    "You are Wolfram, a precise computational mathematician. Solve grade-school math word problems as a "
    "linear sequence of explicit calculation steps, one per line, each stating the quantity it computes. "
    f"No commentary, no restating the problem. {FINAL_LINE}"
)
MAUDLIN_SYSTEM = (
    "You are Maudlin, a reflective math tutor. Explain your reasoning as you solve the problem, say why "
    "each step follows, and flag any step that is easy to get wrong, then double-check it. "
    f"{FINAL_LINE}"
)
SOLVE_TEMPLATE = "Problem: {question}\n\nSolve the problem step by step."
STANDARD_TEMPLATE = "Problem: {question}\n\nGive the canonical step-by-step solution."
COUNTERFACTUAL_TEMPLATE = (
    "Problem: {question}\n\nSuppose the obvious approach to this problem is wrong. Check it: state what the "
    "obvious approach assumes, verify each assumption against the problem statement, then solve the "
    "problem correctly."
)
PROBE_TEMPERATURE = 0.1


def _persona_arms(prefix: str, role: str, system: str, top_p: float, first_seed: int) -> list[ArmSpec]:
    return [
        ArmSpec(
            name=f"{prefix}_{k}",
            role=role,
            temperature=temperature,
            top_p=top_p,
            seed=first_seed + k,
            system_prompt=system,
            user_template=SOLVE_TEMPLATE,
        )
        for k, temperature in enumerate((0.2, 0.3, 0.4, 0.5))
    ]


REGIME_W_ARMS: tuple[ArmSpec, ...] = (
    *_persona_arms("wolfram", "compute", WOLFRAM_SYSTEM, 0.95, 42),
    *_persona_arms("maudlin", "reflective", MAUDLIN_SYSTEM, 0.9, 100),
    ArmSpec(
        name="wolfram_standard",
        role="probe_standard",
        temperature=PROBE_TEMPERATURE,
        top_p=0.95,
        seed=1000,
        system_prompt=WOLFRAM_SYSTEM,
        user_template=STANDARD_TEMPLATE,
    ),
    ArmSpec(
        name="wolfram_rephrase",
        role="probe_rephrase",
        temperature=PROBE_TEMPERATURE,
        top_p=0.95,
        seed=1001,
        system_prompt=WOLFRAM_SYSTEM,
        user_template=STANDARD_TEMPLATE,
    ),
    ArmSpec(
        name="maudlin_cf1",
        role="probe_counterfactual",
        temperature=PROBE_TEMPERATURE,
        top_p=0.9,
        seed=2000,
        system_prompt=MAUDLIN_SYSTEM,
        user_template=COUNTERFACTUAL_TEMPLATE,
    ),
)

def render_prompts(arms: tuple[ArmSpec, ...], question_id: str, question: str) -> QuestionPrompts:
    """Every arm's system and user prompt for one question (the rephrase probe gets the paraphrase)."""
    rendered = []
    for arm in arms:
        text = paraphrase(question) if arm.role == "probe_rephrase" else question
        rendered.append(
            RenderedArmPrompt(arm_name=arm.name, system=arm.system_prompt, user=arm.user_template.format(question=text))
        )
    return QuestionPrompts(question_id=question_id, prompts=rendered)
