"""lm-evaluation-harness as the judge: it reads mathpe's saved folders (``--model hf``) and grades every item as
mathpe's own evaluation does, offline, on local task files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mathpe.data.collate import PaddingCollator, encode_example
from mathpe.data.gsm8k import read_gsm8k_file
from mathpe.data.tokenizer import ArithmeticTokenizer
from mathpe.eval.evaluate import evaluate_task
from mathpe.eval.grading import grade_gsm8k
from mathpe.eval.tasks import ArithmeticSettings, Task, build_task
from mathpe.hf import load_model
from mathpe.model import MathPEConfig, MathPEForCausalLM
from mathpe.train.evaluate_run import load_run_config, load_run_tokenizer
from test_artifacts import make_lora_run

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.model import LM  # noqa: E402  (after the skip when lm-eval is not installed)
from lm_eval.tasks import TaskManager  # noqa: E402

pytestmark = pytest.mark.integration  # lm-eval's harness over saved runs

GSM8K_FIXTURE = Path(__file__).resolve().parents[1] / "src" / "mathpe" / "data" / "fixtures" / "gsm8k.jsonl"
#: The arithmetic task's verdict in the harness: the integer the leading digits of the answer stand for, read
#: least significant digit first (the reversed format), equals the reference's. Written for the harness from
#: the task's definition, not imported from mathpe.
ARITHMETIC_JUDGE = """
import re


def process_results(doc, results):
    digits = re.match(r"\\d*", results[0].strip(), re.ASCII).group()
    return {"exact_match": bool(digits) and int(digits[::-1]) == int(doc["reference"][::-1])}
"""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def addition_task() -> Task:
    """1-digit addition for training; 1- and 2-digit problems for evaluation, so a short training gets some
    right and some wrong."""
    settings = ArithmeticSettings(train_digits=(1, 1), eval_lengths=(1, 2))
    return build_task("addition", seed=0, train_samples=1000, eval_samples=8, arithmetic=settings)


def train_tiny_decoder(task: Task, path: Path, steps: int = 300) -> None:
    """A 2-layer decoder trained on ``task`` for ``steps`` steps, saved with its tokenizer to ``path``."""
    tokenizer = ArithmeticTokenizer()
    config = MathPEConfig(
        pe="rope",
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = MathPEForCausalLM(config).train()
    features = [encode_example(tokenizer, prompt, answer) for prompt, answer in task.train_pairs]
    collate = PaddingCollator(tokenizer.pad_token_id, padding_side="right")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = collate([features[i] for i in torch.randint(len(features), (32,), generator=generator)])
        optimizer.zero_grad()
        model(**batch, use_cache=False).loss.backward()
        optimizer.step()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def samples_by_doc(results: dict, task: str, filter_name: str = "none") -> dict[int, dict]:
    return {
        sample["doc_id"]: sample for sample in results["samples"][task] if sample["filter"] == filter_name
    }


def harness_addition(
    folder: Path, task: Task, tmp_path: Path, model_args: str = ""
) -> tuple[dict[int, dict], float]:
    """lm-eval's ``hf`` model on ``folder`` (``trust_remote_code=True``, plus ``model_args``) over ``task``'s
    evaluation items, a local task file: the logged samples by item and the mean exact match."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_jsonl(
        tasks / "addition.jsonl", [{"prompt": i.prompt, "reference": i.reference} for i in task.eval_items]
    )
    (tasks / "arithmetic_judge.py").write_text(ARITHMETIC_JUDGE)
    (tasks / "mathpe_addition.yaml").write_text(
        f"""task: mathpe_addition
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tasks / "addition.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{reference}}}}"
target_delimiter: ""
generation_kwargs:
  until: []
  do_sample: false
  max_gen_toks: {task.max_new_tokens}
process_results: !function arithmetic_judge.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
    )
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},trust_remote_code=True,dtype=float32{model_args}",
        tasks=["mathpe_addition"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        batch_size=1,
        device="cpu",
        log_samples=True,
    )
    return samples_by_doc(results, "mathpe_addition"), results["results"]["mathpe_addition"][
        "exact_match,none"
    ]


def assert_same_items_and_verdicts(samples: dict[int, dict], predictions: list[dict]) -> None:
    """Every item: the same prompt, the same completion and the same verdict in the harness and in mathpe."""
    assert len(samples) == len(predictions)
    for index, prediction in enumerate(predictions):
        sample = samples[index]
        assert sample["doc"]["prompt"] == prediction["prompt"]
        assert sample["resps"][0][0] == prediction["completion"], prediction["prompt"]
        assert bool(sample["exact_match"]) == prediction["exact_match"], prediction["prompt"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.usefixtures("offline")
def test_lm_eval_reads_a_saved_decoder_and_agrees_item_by_item_with_mathpe_eval(tmp_path: Path) -> None:
    task = addition_task()
    folder = tmp_path / "model"
    train_tiny_decoder(task, folder)
    model = MathPEForCausalLM.from_pretrained(folder)
    tokenizer = ArithmeticTokenizer.from_pretrained(folder)
    metrics, predictions = evaluate_task(model, tokenizer, task, batch_size=1)
    assert 0 < metrics["exact_match"] < 1, metrics["exact_match"]
    samples, mean = harness_addition(folder, task, tmp_path)
    assert_same_items_and_verdicts(samples, predictions)
    assert mean == pytest.approx(metrics["exact_match"])


@pytest.mark.usefixtures("offline")
def test_lm_eval_reads_a_lora_runs_swapped_model_as_mathpe_eval_does(tmp_path: Path) -> None:
    """A LoRA run of a swapped GPT-NeoX (ALiBi): its merged model/ through the harness and through mathpe.

    mathpe encodes prompts without special tokens; its byte tokenizer (ByT5's) appends EOS by default, so
    the harness gets ``add_bos_token=False`` (its switch for special tokens) to see the same prompt."""
    run = make_lora_run(tmp_path)
    _, raw = load_run_config(run)
    tokenizer = load_run_tokenizer(run / "model", raw["tokenizer"])
    task = addition_task()
    _, predictions = evaluate_task(load_model(str(run / "model")), tokenizer, task, batch_size=1)
    samples, _ = harness_addition(run / "model", task, tmp_path, ",add_bos_token=False")
    assert_same_items_and_verdicts(samples, predictions)


class FixedCompletions(LM):
    """An lm-eval model that answers each prompt with a given completion, cut at the stop strings as lm-eval's
    ``hf`` model cuts generations."""

    def __init__(self, completions: dict[str, str]) -> None:
        super().__init__()
        self.completions = completions

    def generate_until(self, requests: list) -> list[str]:
        outputs = []
        for request in requests:
            context, options = request.args
            text = self.completions[context]
            for stop in options.get("until", []):
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs

    def loglikelihood(self, requests: list) -> list:
        raise NotImplementedError

    def loglikelihood_rolling(self, requests: list) -> list:
        raise NotImplementedError


def gsm8k_completion(index: int, gold: str) -> str:
    """Completions of several kinds: right, wrong, right with a separator comma or a dollar sign, right but
    after a stop sequence, without the ``####`` marker, answer repeated, trailing period."""
    kinds = [
        f"So the answer is {gold}.\n#### {gold}",
        f"#### {int(gold) + 1}",
        f"We get {gold}.\n#### {gold[:-1]},{gold[-1]}",  # a separator comma, which the metric ignores
        f"#### ${gold}",
        f"Question: what next?\n#### {gold}",
        f"The answer is {gold}.",
        f"#### {gold}.\n#### 0",
        f"#### {gold}.",
    ]
    return kinds[index % len(kinds)]


@pytest.mark.usefixtures("offline")
def test_lm_eval_gsm8k_strict_match_agrees_item_by_item_with_mathpe_grading(tmp_path: Path) -> None:
    """The harness's own gsm8k.yaml (filters, metric settings) on local data, zero-shot."""
    official = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    (tmp_path / "gsm8k_local.yaml").write_text(
        f"""include: {official}
task: mathpe_gsm8k_local
tag: []
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {GSM8K_FIXTURE}
training_split: null
fewshot_split: null
num_fewshot: 0
"""
    )
    examples = read_gsm8k_file(GSM8K_FIXTURE)
    completions = {
        f"Question: {example.question}\nAnswer:": gsm8k_completion(index, example.final_answer)
        for index, example in enumerate(examples)
    }
    by_question = {
        example.question: prompt_completion
        for example, prompt_completion in zip(examples, completions.values(), strict=True)
    }
    results = lm_eval.simple_evaluate(
        model=FixedCompletions(completions),
        tasks=["mathpe_gsm8k_local"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        num_fewshot=0,
        log_samples=True,
    )
    verdicts = {}
    for filter_name, metric in (("strict-match", "strict_match"), ("flexible-extract", "flexible_extract")):
        samples = samples_by_doc(results, "mathpe_gsm8k_local", filter_name)
        assert len(samples) == len(examples)
        for index, example in enumerate(examples):
            assert samples[index]["doc"]["question"] == example.question
            completion = by_question[example.question]
            mathpe = grade_gsm8k(completion, example.answer)[metric]
            assert bool(samples[index]["exact_match"]) == mathpe, (filter_name, completion)
            verdicts[filter_name, index] = mathpe
    strict = [verdicts["strict-match", index] for index in range(len(examples))]
    assert any(strict) and not all(strict)
