"""`gptresume export CHECKPOINT OUT`: a from_pretrained-ready model directory (tools/export.py)."""

from __future__ import annotations

EXAMPLES = """\
examples:
  gptresume export runs/demo/checkpoint-120 models/demo-120
  gptresume export runs/demo models/demo --force   # final/ (or the newest valid checkpoint); replace models/demo
  gptresume export runs/lora models/lora-merged --merge   # LoRA run: base model with the adapters merged in
  gptresume export runs/demo models/demo --push-to-hub me/demo   # then upload OUT to the hub (committed content)
  gptresume export s3://bucket/runs/demo/checkpoint-120 models/demo-120   # from the remote copy (read-only)
  python -c "from transformers import pipeline; print(pipeline('text-generation', model='models/demo')('The'))"

exit code 0 done, 2 invalid checkpoint or OUT exists and is not empty (without --force); OUT is never half-written."""


def add_parser(subparsers):
    p = subparsers.add_parser("export", help="write a from_pretrained-ready model directory from a checkpoint",
                              description="Copy a verified checkpoint's model and tokenizer files (safetensors "
                                          "weights, config.json, generation_config.json, tokenizer) to OUT, without "
                                          "optimizer, scheduler, RNG or trainer state. A run directory exports its "
                                          "final/ model, or its newest valid checkpoint.", epilog=EXAMPLES)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint-N directory (or a run directory), local "
                                                            "or a URL (checkpoint.remote)")
    p.add_argument("out", metavar="OUT", help="directory to create")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")
    p.add_argument("--merge", action="store_true",
                   help="LoRA run: write the base model with the adapters merged in (default: the adapters)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="upload OUT to this hub model repository (private if new) once it is complete; only a "
                        "verified checkpoint or final/ is exported, so only committed content is pushed")
    return p


def run(args) -> int:
    from gptresume.logs import quiet_transformers
    from gptresume.remote.view import readable
    from gptresume.tools.export import export

    quiet_transformers()  # Transformers' known noise out (logs.py)
    with readable(args.checkpoint, "export") as local:
        out, source = export(local, args.out, force=args.force, merge=args.merge, push_to_hub=args.push_to_hub)
    shown = args.checkpoint if local != args.checkpoint else source.label
    print(f"Exported {shown} to {out}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0
