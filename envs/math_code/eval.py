"""Answer grading for math (SPEAR's strict-box rule, docs/environments.md 3.3) and avg@k.

Pure functions, no sandbox: ``spear-stream eval`` and the environment both call them.

Strict box (math_dapo ``is_correct_strict_box``): only the last 100 characters of the final text are looked at;
the *last* ``\\boxed`` occurrence there must open with ``{`` and close with its matching brace (nesting
allowed); its content, stripped of surrounding whitespace, must equal the stripped ground truth exactly. No
normalisation: ``\\boxed{025}``, ``\\boxed{25.0}`` and ``\\boxed{'25'}`` are all wrong for ``25``.
"""

from __future__ import annotations

BOXED = "\\boxed"
TAIL_CHARS = 100


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` within the last 100 characters, stripped; None if there is none."""
    tail = text[-TAIL_CHARS:]
    start = tail.rfind(BOXED)
    if start < 0:
        return None
    open_brace = start + len(BOXED)
    if tail[open_brace : open_brace + 1] != "{":
        return None
    depth = 0
    for index in range(open_brace, len(tail)):
        char = tail[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return tail[open_brace + 1 : index].strip()
    return None  # unclosed


def is_correct(text: str, answer: str) -> bool:
    """Whether the strict last box of ``text`` equals ``answer`` (both stripped)."""
    predicted = boxed_answer(text)
    return predicted is not None and predicted == answer.strip()


def avg_at_k(correct: list[list[bool]]) -> float:
    """Mean over problems of the fraction of the k samples that were correct (avg@k; k may vary)."""
    if not correct:
        raise ValueError("avg_at_k needs at least one problem")
    if any(not samples for samples in correct):
        raise ValueError("avg_at_k: every problem needs at least one sample")
    return sum(sum(samples) / len(samples) for samples in correct) / len(correct)
