"""Run as a script in a fresh process by tests/test_artifacts.py: load model folders the way a user of plain
transformers does, never importing mathpe itself (the folders' remote code imports it).

argv: a JSON file {"folders": [paths], "tokenizers": [paths], "input_ids": [[ids]], "output": path}. Writes,
with torch.save, per folder: the plain load's error (it must be refused), the logits of the trusted load and
its class, per tokenizer folder its class and ids of "12+34=", and the error of a trusted load while mathpe
cannot be imported.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def error_of(call) -> str | None:
    try:
        call()
    except Exception as error:  # the test checks the type and message
        return f"{type(error).__name__}: {error}"
    return None


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        job = json.load(file)
    folders, input_ids = job["folders"], torch.tensor(job["input_ids"])
    result: dict = {"folders": {}, "tokenizers": {}}
    # Before any trusted load, so no class of mathpe is registered in this process yet.
    for path in folders:
        result["folders"][path] = {
            "plain": error_of(lambda path=path: AutoModelForCausalLM.from_pretrained(path))
        }
    sys.modules["mathpe"] = None  # as if mathpe were not installed: importing it raises ModuleNotFoundError
    result["without_mathpe"] = error_of(
        lambda: AutoModelForCausalLM.from_pretrained(folders[0], trust_remote_code=True)
    )
    del sys.modules["mathpe"]
    result["mathpe_imported_before_loading"] = any(name.split(".")[0] == "mathpe" for name in sys.modules)
    for path in folders:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(input_ids).logits
        result["folders"][path].update(logits=logits, model_class=type(model).__name__)
    for path in job["tokenizers"]:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        result["tokenizers"][path] = {"class": type(tokenizer).__name__, "ids": tokenizer("12+34=").input_ids}
    torch.save(result, job["output"])


if __name__ == "__main__":
    main()
