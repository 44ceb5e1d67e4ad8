"""Graders for GSM8K, MATH and arithmetic completions.

GSM8K and MATH follow lm-evaluation-harness (EleutherAI/lm-evaluation-harness). The harness is not a
lightweight dependency, so its definitions are re-written here by hand, keeping their behaviour, quirks
included; each function names the harness file it follows.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

from math_verify import parse, verify

if TYPE_CHECKING:
    from mathpe.data.arithmetic import AnswerFormat

INVALID_ANSWER = "[invalid]"  # RegexFilter's fallback (lm_eval/filters/extraction.py)
MATH_VERIFY_TIMEOUT_SECONDS = 5  # math-verify's own default for parse and verify

# lm_eval/tasks/gsm8k/gsm8k.yaml (metadata version 3.0)
GSM8K_STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")
GSM8K_STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORED_PATTERNS = (",", r"\$", r"(?s).*#### ", r"\.$")

# lm_eval/tasks/hendrycks_math/hendrycks_math_*.yaml and lm_eval/tasks/minerva_math/minerva_math_*.yaml
MATH_STOP_SEQUENCES = ("Problem:",)


# ---------------------------------------------------------------------------------------------- GSM8K


def truncate_at_stop(text: str, stop_sequences: tuple[str, ...]) -> str:
    """``text`` up to the first stop sequence, as the harness's ``generate_until`` returns it."""
    cut = min((index for stop in stop_sequences if (index := text.find(stop)) >= 0), default=len(text))
    return text[:cut]


def regex_extract(text: str, pattern: re.Pattern[str], group_select: int) -> str:
    """The harness's ``RegexFilter`` (lm_eval/filters/extraction.py): the ``group_select``-th match of
    ``findall``, its first non-empty group when the pattern has several, stripped; ``[invalid]`` if none."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID_ANSWER
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next(group for group in match if group)
    return match.strip()


def normalize_gsm8k(text: str) -> str:
    """The harness's ``exact_match`` preprocessing for GSM8K (lm_eval/api/metrics.py
    ``exact_match_hf_evaluate`` with gsm8k.yaml's settings): delete each of ``regexes_to_ignore`` in turn,
    then lower-case (``ignore_case: true``, ``ignore_punctuation: false``)."""
    for pattern in GSM8K_IGNORED_PATTERNS:
        text = re.sub(pattern, "", text)
    return text.lower()


def grade_gsm8k(completion: str, reference: str) -> dict[str, Any]:
    """GSM8K ``strict-match`` and ``flexible-extract`` exact match, as lm-evaluation-harness's gsm8k.yaml.

    ``reference`` is the gold answer field (``"...\\n#### 18"``) or the bare number. The completion is cut at
    the task's stop sequences first, as generation would have been.
    """
    completion = truncate_at_stop(completion, GSM8K_STOP_SEQUENCES)
    strict = regex_extract(completion, GSM8K_STRICT_PATTERN, group_select=0)
    flexible = regex_extract(completion, GSM8K_FLEXIBLE_PATTERN, group_select=-1)
    gold = normalize_gsm8k(reference)
    return {
        "strict_match": normalize_gsm8k(strict) == gold,
        "flexible_extract": normalize_gsm8k(flexible) == gold,
        "strict_answer": strict,
        "flexible_answer": flexible,
        "reference_answer": gold,
    }


# ----------------------------------------------------------------------------------------------- MATH
# Answer extraction and string normalisation follow lm_eval/tasks/hendrycks_math/utils.py
# (``last_boxed_only_string``, ``remove_boxed``, ``extract_answer``, ``is_equiv``, ``strip_string``).


def last_boxed_only_string(text: str) -> str | None:
    """The last ``\\boxed{...}`` (nested braces) or ``\\fbox{...}`` of ``text``, or ``\\boxed x`` up to the
    next ``$``; ``None`` when there is none. Harness quirk kept: any ``\\boxed `` (with a space) wins over
    later ``\\boxed{...}``."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
    if start < 0:
        return None
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    return None


def remove_boxed(boxed: str) -> str | None:
    """The content of ``\\boxed{x}``, ``\\boxed x`` or ``\\fbox{x}``; ``None`` for other shapes such as
    ``\\boxed\\frac{1}{2}`` (where the harness's assertions would fail). ``\\fbox`` is accepted here; the
    harness asserts on it."""
    if "\\boxed " in boxed:
        return boxed[len("\\boxed ") :] if boxed.startswith("\\boxed ") else None
    for opening in ("\\boxed{", "\\fbox{"):
        if boxed.startswith(opening) and boxed.endswith("}"):
            return boxed[len(opening) : -1]
    return None


def extract_boxed_answer(text: str) -> str | None:
    """The content of the last box in ``text``, or ``None``."""
    boxed = last_boxed_only_string(text)
    return None if boxed is None else remove_boxed(boxed)


def extract_math_answer(completion: str) -> str:
    """The harness's ``extract_answer``: the last box, else the first ``\\[...\\]``, else the text between
    the first and the last ``$``, else the whole completion."""
    boxed = extract_boxed_answer(completion)
    if boxed is not None:
        return boxed
    display = re.search(r"\\\[(.+?)\\\]", completion, re.DOTALL)
    if display:
        return display.group(1).strip()
    dollars = [index for index, character in enumerate(completion) if character == "$"]
    if len(dollars) >= 2:
        return completion[dollars[0] + 1 : dollars[-1]]
    return completion


def is_equiv(answer: str | None, reference: str | None) -> bool:
    """The harness's ``is_equiv``: equal after ``strip_string``; when normalising fails, the raw strings
    compared. Two ``None`` are equal (the harness warns), one ``None`` is not."""
    if answer is None or reference is None:
        return answer is None and reference is None
    try:
        return strip_string(answer) == strip_string(reference)
    except (IndexError, ValueError):
        return answer == reference


def strip_string(text: str) -> str:
    """The harness's ``strip_string``, step for step. Raises where the harness raises (``\\frac`` or
    ``\\sqrt`` at the end, two ``\\text{ `` units, a single ``/`` between non-integers)."""
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "")
    text = _remove_right_units(text)
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # drop a short "k = " in front
        text = sides[1]
    text = _fix_sqrt(text)
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _fix_a_slash_b(text)


def _remove_right_units(text: str) -> str:
    if "\\text{ " not in text:
        return text
    parts = text.split("\\text{ ")
    if len(parts) != 2:  # the harness asserts here
        raise ValueError(f"{text!r} has more than one '\\text{{ ' unit")
    return parts[0]


def _fix_sqrt(text: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``; raises ``IndexError`` on a trailing ``\\sqrt``, as the harness does."""
    first, *rest = text.split("\\sqrt")
    fixed = [part if part[0] == "{" else "{" + part[0] + "}" + part[1:] for part in rest]
    return first + "".join("\\sqrt" + part for part in fixed)


def _fix_fracs(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``; unchanged when a ``\\frac``
    has fewer than two characters after it; ``IndexError`` on a trailing ``\\frac``, as the harness."""
    first, *rest = text.split("\\frac")
    fixed = first
    for part in rest:
        fixed += "\\frac"
        if part[0] == "{":
            fixed += part
        elif len(part) < 2:
            return text
        elif part[1] != "{":
            fixed += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            fixed += "{" + part[0] + "}" + part[1:]
    return fixed


def _fix_a_slash_b(text: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}``. Harness quirk kept: a single ``/`` between non-integers raises
    ``ValueError`` (its ``int()`` is outside the ``try``), so ``is_equiv`` falls back to raw equality."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    numerator, denominator = int(parts[0]), int(parts[1])
    if text != f"{numerator}/{denominator}":
        return text
    return "\\frac{" + str(numerator) + "}{" + str(denominator) + "}"


def math_verify_equiv(completion: str, reference_solution: str) -> bool:
    """math-verify's verdict, gold first: ``verify(parse(gold), parse(prediction))``.

    math-verify's timeouts use ``signal.alarm``, which only the main thread may set; off the main thread
    (a thread pool, a data-loader thread) they are switched off, so a pathological input could run long
    there. Worker processes run this on their own main thread and keep the timeouts.
    """
    seconds = MATH_VERIFY_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    gold = parse(reference_solution, parsing_timeout=seconds)
    prediction = parse(completion, parsing_timeout=seconds)
    return verify(gold, prediction, timeout_seconds=seconds)


def grade_math(completion: str, reference_solution: str) -> dict[str, Any]:
    """MATH graded two ways: ``is_equiv`` (lm-evaluation-harness ``hendrycks_math``: the last boxed
    answer, or its fallbacks, against the gold box after ``strip_string``) and ``math_verify``
    (math-verify on the whole texts, as the harness's ``minerva_math`` does).

    ``reference_solution`` is a solution with a ``\\boxed{}`` answer, or a bare answer (as MATH-500's
    ``answer`` field). The completion is cut at ``Problem:`` first, the tasks' stop sequence.
    """
    completion = truncate_at_stop(completion, MATH_STOP_SEQUENCES)
    reference_answer = extract_boxed_answer(reference_solution)
    if reference_answer is None:
        reference_answer = reference_solution.strip()
        reference_solution = "\\boxed{" + reference_answer + "}"
    predicted_answer = extract_math_answer(completion)
    return {
        "is_equiv": is_equiv(predicted_answer, reference_answer),
        "math_verify": math_verify_equiv(completion, reference_solution),
        "predicted_answer": predicted_answer,
        "reference_answer": reference_answer,
    }


# ----------------------------------------------------------------------------------------- Arithmetic


def decode_answer(digits: str, fmt: AnswerFormat) -> int:
    """The integer an answer written in ``fmt`` stands for (``"861"`` reversed is 168)."""
    if fmt not in ("plain", "reversed"):
        raise ValueError(f"fmt={fmt!r} is not one of ['plain', 'reversed']")
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"answer {digits!r} must be a non-empty string of digits 0-9")
    return int(digits[::-1] if fmt == "reversed" else digits)


def drop_index_hints(text: str) -> str:
    """``text`` without its index-hint letters (``mathpe.data.arithmetic.INDEX_HINTS``, the ASCII letters)."""
    return re.sub(r"[A-Za-z]", "", text)


def extract_arithmetic_answer(completion: str, fmt: AnswerFormat, index_hints: bool = False) -> int | None:
    """The integer a completion answers: its leading digits (after whitespace) read in ``fmt``; None if none.

    Anything from the first non-digit on (EOS included) is ignored. With ``index_hints`` the leading run may
    interleave hint letters with the digits (``"a8b6c1"``); the letters are dropped and only the digits are
    graded, so a wrong hint before a right digit still counts: the hints are scaffolding, the number is the
    answer.
    """
    leading = r"[0-9A-Za-z]*" if index_hints else r"\d*"
    digits = drop_index_hints(re.match(leading, completion.strip(), re.ASCII).group())
    return decode_answer(digits, fmt) if digits else None


def grade_arithmetic(completion: str, answer: str, fmt: AnswerFormat, index_hints: bool = False) -> bool:
    """Exact match on the integer: the completion's answer (``extract_arithmetic_answer``) against ``answer``,
    both read in ``fmt`` (and both without their index hints when ``index_hints``)."""
    predicted = extract_arithmetic_answer(completion, fmt, index_hints)
    reference = drop_index_hints(answer.strip()) if index_hints else answer.strip()
    return predicted is not None and predicted == decode_answer(reference, fmt)
