"""`gptresume eval PATH`: loss and perplexity on the run's validation split, or on given text files.

The loss is computed the way `Trainer.evaluation_loop` computes `eval_loss` (checked against transformers 5.24):
each batch's loss is its summed cross-entropy divided by Trainer's `num_items_in_batch`, every example of a batch
gets its batch's loss, and eval_loss is the float32 mean over examples. The per-token loss is reported beside it
(see `mean_eval_loss` for why they differ for GPT-2). So `eval` on a checkpoint prints the eval_loss Trainer
logged at that step (tests hold it to 1e-5).
The validation split is the run's own: read from RUN_DIR/data-cache by its data fingerprint, or packed again
from the source with the same code and refused if its fingerprint differs from the one the checkpoint recorded.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from gptresume.checkpoint import newest_valid
from gptresume.config import DataConfig
from gptresume.config.schema import data_config_of_record
from gptresume.data import CACHE_META_NAME, DATA_CACHE_DIR, PackedBlockCollator, load_texts, pack, prepare_data
from gptresume.data.packing import open_cache
from gptresume.data.sources import resolve_files
from gptresume.errors import UsageError
from gptresume.rundir import CONFIG_NAME, perplexity, read_history
from gptresume.tools.common import ModelSource, context_length, load_model_for, load_tokenizer_for, resolve_model

log = logging.getLogger(__name__)

DATA_OPTION = "eval --data"  # how messages name the files given on the command line
DEFAULT_EVAL_BATCH_SIZE = 8  # TrainingArguments.per_device_eval_batch_size's default


@dataclass
class EvalResult:
    loss: float
    """eval_loss as Trainer computes and logs it."""
    perplexity: float
    token_loss: float
    """Mean cross-entropy over all predicted tokens (`loss` is the mean of per-batch means, as Trainer logs it)."""
    token_perplexity: float
    blocks: int
    block_size: int
    data: str
    """What was evaluated: the run's validation split or the files."""
    model: str

    @property
    def tokens(self) -> int:
        return self.blocks * self.block_size

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tokens": self.tokens}


def evaluate(path, data_files: list[str] | None = None, batch_size: int | None = None,
             block_size: int | None = None, text_unit: str | None = None) -> EvalResult:
    source = resolve_model(path, "eval")
    if data_files:  # a path or glob that matches nothing is reported before the model loads
        resolve_files(DataConfig(source=list(data_files)), DATA_OPTION)
    run_cfg = _run_config(source)
    if batch_size is None:
        batch_size = int((run_cfg or {}).get("train", {}).get("per_device_eval_batch_size") or DEFAULT_EVAL_BATCH_SIZE)
    if batch_size < 1:
        raise UsageError(f"eval: --batch-size must be at least 1 (got {batch_size})")
    tokenizer = load_tokenizer_for(source, "eval")
    model = load_model_for(source, "eval")
    run_data = data_config_of_record((run_cfg or {}).get("data") or {}) if run_cfg else None
    if data_files:
        size = block_size or (run_data.block_size if run_data else None) or min(context_length(model) or 1024, 1024)
        blocks, what = _file_blocks(data_files, tokenizer, size, run_data, text_unit)
    else:
        if block_size is not None or text_unit is not None:
            raise UsageError("eval: --block-size and --text-unit apply to --data files; the run's validation "
                             "split has its own")
        blocks, size, what = _validation_blocks(source, run_data, tokenizer)
    room = context_length(model)
    if room is not None and size > room:
        raise UsageError(f"eval: blocks of {size} tokens do not fit the model's context of {room} positions; "
                         f"pass --block-size {room} or less")
    loss, token_loss = mean_eval_loss(model, blocks, batch_size)
    return EvalResult(loss=loss, perplexity=perplexity(loss), token_loss=token_loss,
                      token_perplexity=perplexity(token_loss), blocks=len(blocks), block_size=size, data=what,
                      model=source.label)


def mean_eval_loss(model, blocks, batch_size: int) -> tuple[float, float]:
    """(eval_loss exactly as Trainer.evaluation_loop computes it, mean cross-entropy per predicted token) for
    packed blocks (no padding, labels = inputs).

    Trainer (transformers 5.24) passes `num_items_in_batch` to the model: the count of labels != -100 (of
    `labels[..., 1:]` when the model's `loss_type` maps to ForCausalLMLoss; GPT-2 has none). The training collator
    sets each block's first label to -100 (data.PackedBlockCollator), so both counts are the predicted tokens and
    the loss is the mean cross-entropy per predicted token. The first value repeats Trainer's computation (what
    the run logged: the mean of per-batch losses); the second is the mean over all predicted tokens.
    """
    import numpy as np
    import torch

    device = next(model.parameters()).device
    accepts_kwargs = getattr(model, "accepts_loss_kwargs", None)
    if accepts_kwargs is None:
        accepts_kwargs = any(p.kind == inspect.Parameter.VAR_KEYWORD
                             for p in inspect.signature(model.forward).parameters.values())
    counts_shifted = _trainer_counts_shifted_labels(model)
    ids_all = blocks.array() if hasattr(blocks, "array") else blocks.with_format("numpy")["input_ids"]
    per_example, token_sum, token_count = [], 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids_all), batch_size):
            ids = torch.as_tensor(np.asarray(ids_all[start:start + batch_size]), dtype=torch.long, device=device)
            predicted = int(ids[..., 1:].ne(-100).sum())
            labels = PackedBlockCollator()([{"input_ids": row} for row in ids.tolist()])["labels"].to(device)
            divisor = labels[..., 1:].ne(-100).sum() if counts_shifted else labels.ne(-100).sum()
            kwargs = {"num_items_in_batch": divisor} if accepts_kwargs else {}
            loss = model(input_ids=ids, labels=labels, **kwargs).loss.detach().mean()
            per_example.append(loss.repeat(ids.shape[0]).float().cpu())  # as Trainer: each example, its batch's loss
            batch_sum = float(loss) * (int(divisor) if accepts_kwargs else predicted)
            token_sum, token_count = token_sum + batch_sum, token_count + predicted
    losses = torch.cat(per_example).numpy()
    finite = np.isfinite(losses)
    if finite.any():  # TrainingArguments.logging_nan_inf_filter (default True)
        losses = losses[finite]
    return losses.mean().item(), token_sum / max(token_count, 1)


def _trainer_counts_shifted_labels(model) -> bool:
    """Trainer's `_loss_shifts_labels` rule (transformers 5.24, Trainer.__init__)."""
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    except ImportError:  # a transformers without the mapping: assume the count is over predicted tokens
        return True
    return (LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss
            and not getattr(model.config, "is_encoder_decoder", False))


# ---------------------------------------------------------------- data


def _file_blocks(files, tokenizer, block_size: int, run_data: DataConfig | None, text_unit: str | None):
    unit = text_unit or (run_data.text_unit if run_data else "document")
    column = run_data.text_column if run_data else "text"
    cfg = DataConfig(source=list(files), text_unit=unit, text_column=column, validation_fraction=0)
    problems = cfg.problems("--data")
    if problems:
        raise UsageError("eval: " + "; ".join(p.replace("--data.source", "--data") for p in problems))
    blocks, n_tokens = pack(load_texts(cfg, field=DATA_OPTION), tokenizer, block_size)
    if len(blocks) == 0:
        raise UsageError(f"eval: {', '.join(files)} hold {n_tokens} tokens, fewer than one block of {block_size}; "
                         "add text or pass a smaller --block-size")
    return blocks, f"{', '.join(files)} ({n_tokens:,} tokens, {unit} per document)"


def _validation_blocks(source: ModelSource, run_data: DataConfig | None, tokenizer):
    import datasets

    if source.run_dir is None or run_data is None:
        raise UsageError(f"eval: {source.model_dir} is not part of a run (no {CONFIG_NAME} beside it), so there is "
                         "no validation split; pass --data FILE to evaluate on text files")
    if run_data.validation_fraction <= 0:
        raise UsageError(f"eval: run {source.run_dir} has no validation split (data.validation_fraction is 0); "
                         "pass --data FILE to evaluate on text files")
    expected = _expected_data_fingerprint(source)
    cache_root = source.run_dir / DATA_CACHE_DIR
    for meta_path in sorted(cache_root.glob(f"*/{CACHE_META_NAME}")):
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == expected and meta.get("block_size") == run_data.block_size:
            cached = open_cache(meta_path.parent, run_data.block_size)
            if cached.validation is not None:
                return (cached.validation, run_data.block_size,
                        f"validation split of {source.run_dir} ({meta_path.parent})")
    # No cached split with that fingerprint: pack the source again with the same code (in a temporary directory:
    # eval never writes into the run), and insist it is the same.
    try:
        with tempfile.TemporaryDirectory(prefix="gptresume-eval-") as tmp:
            prepared = prepare_data(run_data, tokenizer, Path(tmp))
            if prepared.validation is not None:  # small: read into memory before the directory goes
                prepared.validation = datasets.Dataset.from_dict(
                    {"input_ids": [row["input_ids"].tolist() for row in prepared.validation]})
    except UsageError as e:
        raise UsageError(f"eval: {cache_root} has no split with data fingerprint {expected}, and packing the run's "
                         f"data source again failed: {e}") from None
    if expected is not None and prepared.fingerprint != expected:
        raise UsageError(f"eval: the run's data source changed since training (data fingerprint {prepared.fingerprint}"
                         f", the run recorded {expected}); its validation split cannot be rebuilt; pass --data FILE")
    if prepared.validation is None:
        raise UsageError(f"eval: run {source.run_dir} has no validation split; pass --data FILE")
    return (prepared.validation, run_data.block_size,
            f"validation split of {source.run_dir} (packed again from the source)")


def _expected_data_fingerprint(source: ModelSource) -> str | None:
    if source.checkpoint is not None and source.checkpoint.manifest:
        return source.checkpoint.manifest.get("data_fingerprint")
    info, _ = newest_valid(source.run_dir)
    if info is not None:
        return info.manifest.get("data_fingerprint")
    events = [e for e in read_history(source.run_dir) if e.get("data_fingerprint")]
    return events[-1]["data_fingerprint"] if events else None


def _run_config(source: ModelSource) -> dict | None:
    """The config the model was trained with: the checkpoint's manifest, else RUN_DIR/config.yaml."""
    if source.checkpoint is not None and source.checkpoint.manifest and source.checkpoint.manifest.get("config"):
        return source.checkpoint.manifest["config"]
    if source.run_dir is not None and (source.run_dir / CONFIG_NAME).is_file():
        try:
            return yaml.safe_load((source.run_dir / CONFIG_NAME).read_text())
        except yaml.YAMLError as e:
            raise UsageError(f"eval: {source.run_dir / CONFIG_NAME} is not valid YAML: {e}") from None
    return None
