#!/usr/bin/env python
"""The founding command: train one PE and evaluate it (same as ``mathpe train``).

    python scripts/train_and_eval.py --pe rope --model_size wellecks/llmstep-mathlib4-pythia2.8b \
        --batch_size 2 --max_length 2048 --use_lora --gradient_checkpointing --fp16 \
        --experiment_name kaggle_math_reasoning --datasets gsm8k,math
"""

import sys

from mathpe.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
