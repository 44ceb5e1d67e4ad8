"""Math data: seeded arithmetic problems, a character tokenizer, GSM8K and MATH loaders, and
answer-masked training examples.

Shipped fixtures (a few hand-written problems in each dataset's format) live in ``FIXTURES_DIR``:
``gsm8k.jsonl`` (read with ``read_gsm8k_file``) and ``math.jsonl`` (read with ``read_math_file``).
"""

from pathlib import Path

from mathpe.data.arithmetic import (
    ArithmeticSplits,
    ArithmeticTask,
    Example,
    build_splits,
    format_example,
    generate_examples,
    length_eval_sets,
    problem_keys,
)
from mathpe.data.collate import IGNORE_INDEX, PaddingCollator, encode_example, encode_examples
from mathpe.data.gsm8k import GSM8KExample, load_gsm8k, read_gsm8k_file, strip_calculator_annotations
from mathpe.data.jsonl import DataUnavailableError, MalformedDataError, read_jsonl, resolve_data_dir
from mathpe.data.math import MINERVA_FEWSHOT_EXAMPLES, MATHExample, load_math, read_math_file
from mathpe.data.tokenizer import ArithmeticTokenizer, digit_token_ids

FIXTURES_DIR = Path(__file__).parent / "fixtures"

__all__ = [
    "FIXTURES_DIR",
    "IGNORE_INDEX",
    "MINERVA_FEWSHOT_EXAMPLES",
    "ArithmeticSplits",
    "ArithmeticTask",
    "ArithmeticTokenizer",
    "DataUnavailableError",
    "Example",
    "GSM8KExample",
    "MATHExample",
    "MalformedDataError",
    "PaddingCollator",
    "build_splits",
    "digit_token_ids",
    "encode_example",
    "encode_examples",
    "format_example",
    "generate_examples",
    "length_eval_sets",
    "load_gsm8k",
    "load_math",
    "problem_keys",
    "read_gsm8k_file",
    "read_jsonl",
    "read_math_file",
    "resolve_data_dir",
    "strip_calculator_annotations",
]
