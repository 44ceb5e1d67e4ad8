"""Grading of model completions: GSM8K, MATH and arithmetic."""

from mathpe.eval.grading import grade_arithmetic, grade_gsm8k, grade_math

__all__ = ["grade_arithmetic", "grade_gsm8k", "grade_math"]
