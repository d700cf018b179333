"""`gptresume eval PATH`: validation loss and perplexity, as Trainer computes eval_loss (tools/evaluate.py)."""

from __future__ import annotations

EXAMPLES = """\
examples:
  gptresume eval runs/demo/checkpoint-120     # the run's validation split: the eval_loss Trainer logged at step 120
  gptresume eval runs/demo --data notes/*.txt --batch-size 16
  gptresume eval models/demo --data test.txt --block-size 128
  gptresume eval s3://bucket/runs/demo/checkpoint-120 --data test.txt   # a remote copy (read-only)

Prints loss and perplexity (exp(loss)); --json for a JSON object."""


def add_parser(subparsers):
    p = subparsers.add_parser("eval", help="validation loss and perplexity of a checkpoint, a run or a model",
                              description="Loss and perplexity on the run's validation split (the same blocks "
                                          "Trainer evaluated, computed the way Trainer computes eval_loss), or on "
                                          "text files packed into blocks the way training packs them.",
                              epilog=EXAMPLES)
    p.add_argument("path", metavar="PATH", help="checkpoint, run or model directory, local or a URL")
    p.add_argument("--data", nargs="+", metavar="FILE", help="evaluate on these files (.txt, .jsonl, .csv, "
                                                               ".parquet; globs allowed) instead")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="blocks per forward pass (default: the run's per_device_eval_batch_size, else 8)")
    p.add_argument("--block-size", type=int, default=None, metavar="N",
                   help="with --data: tokens per block (default: the run's data.block_size, else the model's context)")
    p.add_argument("--text-unit", choices=("document", "paragraph", "line"), default=None,
                   help="with --data: how .txt files split into documents (default: the run's, else document)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args) -> int:
    import json

    from gptresume.logs import quiet_transformers
    from gptresume.allocator import keep_freed_memory
    from gptresume.remote.view import readable
    from gptresume.tools.evaluate import evaluate

    quiet_transformers()  # Transformers' known noise out (logs.py)
    keep_freed_memory()
    with readable(args.path, "eval") as local:
        result = evaluate(local, data_files=args.data, batch_size=args.batch_size, block_size=args.block_size,
                          text_unit=args.text_unit)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(f"eval_loss {result.loss:.6f}  perplexity {result.perplexity:.4f}  (as Trainer computes eval_loss)")
        if abs(result.token_loss - result.loss) > 1e-6 * abs(result.loss):
            print(f"token loss {result.token_loss:.6f}  perplexity {result.token_perplexity:.4f}  (per predicted "
                  "token; Trainer divides GPT-2's summed loss by every label position, see README)")
        print(f"  data:  {result.blocks} blocks of {result.block_size} tokens: {result.data}")
        print(f"  model: {result.model}")
    return 0
