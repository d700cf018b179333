"""`gptresume generate PATH --prompt TEXT`: sample text from a checkpoint, a run or a model (tools/generate.py)."""

from __future__ import annotations

import logging

EXAMPLES = """\
examples:
  gptresume generate runs/demo --prompt "The"                       # final/ or the newest valid checkpoint
  gptresume generate runs/demo/checkpoint-120 --prompt "def" --num-samples 3 --seed 1
  gptresume generate models/demo --prompt "A list" --greedy --max-new-tokens 20

The same command prints the same text (sampling is seeded; --seed changes it)."""


def add_parser(subparsers):
    p = subparsers.add_parser("generate", help="sample text from a checkpoint, a run or an exported model",
                              description="Sample text. PATH is a checkpoint-N directory, a run directory (its "
                                          "final/ model if present, else its newest valid checkpoint) or a "
                                          "directory written by export or save_pretrained.", epilog=EXAMPLES)
    p.add_argument("path", metavar="PATH", help="checkpoint, run or model directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=50, metavar="N",
                   help="tokens to add (default 50; capped at the model's context)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=50, metavar="K", help="sample from the K likeliest tokens (default "
                                                                       "50; 0 turns it off)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling (default 1.0: off)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to print (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0: the same text every time)")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (no sampling)")
    return p


def run(args) -> int:
    from gptresume.logs import quiet_transformers
    from gptresume.tools.generate import GenerateOptions, generate

    quiet_transformers()  # Transformers' known noise out (logs.py)
    options = GenerateOptions(prompt=args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, num_samples=args.num_samples, seed=args.seed,
                              greedy=args.greedy)
    samples, source = generate(args.path, options)
    logging.getLogger("gptresume").info("Model: %s", source.label)
    for i, text in enumerate(samples, 1):
        if len(samples) > 1:
            print(f"--- sample {i} ---")
        print(text)
    return 0
