"""`gptresume generate PATH --prompt TEXT`: sample text from a checkpoint, a run or an exported model.

Sampling is seeded (default seed 0), so the same command prints the same text on the same machine and versions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gptresume.errors import UsageError
from gptresume.tools.common import ModelSource, context_length, load_model_for, load_tokenizer_for, resolve_model

log = logging.getLogger(__name__)

DEFAULT_SEED = 0


@dataclass
class GenerateOptions:
    prompt: str
    max_new_tokens: int = 50
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = DEFAULT_SEED
    greedy: bool = False

    def check(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"--max-new-tokens: must be at least 1 (got {self.max_new_tokens})")
        if self.temperature <= 0:
            problems.append(f"--temperature: must be positive (got {self.temperature}); use --greedy for argmax")
        if self.top_k < 0:
            problems.append(f"--top-k: must be 0 (off) or more (got {self.top_k})")
        if not 0 < self.top_p <= 1:
            problems.append(f"--top-p: must be in (0, 1] (got {self.top_p})")
        if self.num_samples < 1:
            problems.append(f"--num-samples: must be at least 1 (got {self.num_samples})")
        if self.greedy and self.num_samples > 1:
            problems.append("--greedy gives one answer; drop --num-samples or --greedy")
        if problems:
            raise UsageError("generate: " + "; ".join(problems))


def generate(path, options: GenerateOptions) -> tuple[list[str], ModelSource]:
    """The samples (prompt included) and where the model came from."""
    import torch

    options.check()
    source = resolve_model(path, "generate")
    tokenizer = load_tokenizer_for(source, "generate")
    model = load_model_for(source, "generate")
    enc = tokenizer(options.prompt, return_tensors="pt").to(model.device)
    n_prompt = enc["input_ids"].shape[1]
    if n_prompt == 0:
        raise UsageError("generate: --prompt is empty after tokenization; give some text")
    new_tokens = options.max_new_tokens
    room = context_length(model)
    if room is not None:
        if n_prompt >= room:
            raise UsageError(f"generate: the prompt is {n_prompt} tokens; the model's context is {room} tokens "
                             "(n_positions); shorten the prompt")
        if n_prompt + new_tokens > room:
            new_tokens = room - n_prompt
            log.warning("--max-new-tokens %d: capped at %d (prompt %d + new tokens must fit the model's context "
                        "of %d positions)", options.max_new_tokens, new_tokens, n_prompt, room)
    kwargs = dict(max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
    if options.greedy:
        kwargs.update(do_sample=False)
    else:
        kwargs.update(do_sample=True, temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                      num_return_sequences=options.num_samples)
    from transformers.utils import logging as hf_logging

    torch.manual_seed(options.seed)
    verbosity = hf_logging.get_verbosity()
    # GPT-2's prefill drops the all-ones attention mask and then warns that one is missing (transformers 5.24):
    # the prompt is one unpadded sequence, so the warning is noise here.
    hf_logging.set_verbosity_error()
    try:
        with torch.no_grad():
            out = model.generate(**enc, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    return [tokenizer.decode(seq, skip_special_tokens=True) for seq in out], source
