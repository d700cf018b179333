"""The fields of `transformers.TrainingArguments` and of `GPT2Config`, with their declared defaults, per supported
Transformers release (major.minor), checked in. Two things read them without importing torch or transformers:

- the config check: a typo in `train:` or in a GPT-2 `model.from_scratch` is reported, with the closest name, in a
  fraction of a second (config/load.py, config/schema.py);
- the resume policy: a checkpoint's recorded `TrainingArguments` are read as the values the run used, a field absent
  from a record being the default declared by the release that wrote it (resume/effective.py).

tests/unit/test_compat.py compares the installed release's entry with the installed classes, so an upgrade that
adds, removes or changes a field fails there, naming it; `python -m gptresume.config.hf_fields` prints the entry to
add. A release without an entry is checked by importing transformers, as before these tables existed.

Values are in their stable JSON form (`json_value`): enums as their values, tuples as lists, mapping keys as strings.
"""

from __future__ import annotations

import dataclasses
import enum

# The fields of TrainingArguments that describe the machine, the launch or credentials, not the training: a checkpoint
# does not record them and a resume never compares them (the process count is compared by its own rule, world_size).
ENVIRONMENT_FIELDS = frozenset({"local_rank", "hub_token", "output_dir", "resume_from_checkpoint",
                                "overwrite_output_dir", "disable_tqdm", "log_level", "log_level_replica",
                                "logging_dir", "save_total_limit", "save_on_each_node"})

TRAINING_ARGUMENTS: dict[str, dict[str, object]] = {
    "5.24": {
        'output_dir': None,
        'per_device_train_batch_size': 8,
        'num_train_epochs': 3.0,
        'max_steps': -1,
        'learning_rate': 5e-05,
        'lr_scheduler_type': 'linear',
        'lr_scheduler_kwargs': None,
        'warmup_steps': 0,
        'optim': 'adamw_torch_fused',
        'optim_args': None,
        'weight_decay': 0.0,
        'adam_beta1': 0.9,
        'adam_beta2': 0.999,
        'adam_epsilon': 1e-08,
        'optim_target_modules': None,
        'gradient_accumulation_steps': 1,
        'average_tokens_across_devices': True,
        'max_grad_norm': 1.0,
        'label_smoothing_factor': 0.0,
        'bf16': False,
        'fp16': False,
        'bf16_full_eval': False,
        'fp16_full_eval': False,
        'tf32': None,
        'activation_checkpointing': None,
        'activation_checkpointing_kwargs': None,
        'gradient_checkpointing': None,
        'gradient_checkpointing_kwargs': None,
        'torch_compile': False,
        'torch_compile_backend': None,
        'torch_compile_mode': None,
        'use_liger_kernel': False,
        'liger_kernel_config': None,
        'use_cache': False,
        'neftune_noise_alpha': None,
        'torch_empty_cache_steps': None,
        'auto_find_batch_size': False,
        'logging_strategy': 'steps',
        'logging_steps': 500,
        'logging_first_step': False,
        'log_on_each_node': True,
        'logging_nan_inf_filter': True,
        'include_num_input_tokens_seen': 'no',
        'log_level': 'passive',
        'log_level_replica': 'warning',
        'disable_tqdm': None,
        'report_to': 'none',
        'run_name': None,
        'project': 'huggingface',
        'trackio_space_id': None,
        'trackio_bucket_id': None,
        'trackio_static_space_id': None,
        'eval_strategy': 'no',
        'eval_steps': None,
        'eval_delay': 0,
        'per_device_eval_batch_size': 8,
        'prediction_loss_only': False,
        'eval_on_start': False,
        'eval_do_concat_batches': True,
        'eval_use_gather_object': False,
        'eval_accumulation_steps': None,
        'include_for_metrics': [],
        'batch_eval_metrics': False,
        'save_only_model': False,
        'save_strategy': 'steps',
        'save_steps': 500,
        'save_on_each_node': False,
        'save_total_limit': None,
        'enable_jit_checkpoint': False,
        'push_to_hub': False,
        'hub_token': None,
        'hub_private_repo': None,
        'hub_model_id': None,
        'hub_strategy': 'every_save',
        'hub_always_push': False,
        'hub_revision': None,
        'load_best_model_at_end': False,
        'metric_for_best_model': None,
        'greater_is_better': None,
        'ignore_data_skip': False,
        'restore_callback_states_from_checkpoint': False,
        'full_determinism': False,
        'seed': 42,
        'data_seed': None,
        'use_cpu': False,
        'accelerator_config': None,
        'parallelism_config': None,
        'dataloader_drop_last': False,
        'dataloader_num_workers': 0,
        'dataloader_pin_memory': True,
        'dataloader_persistent_workers': False,
        'dataloader_prefetch_factor': None,
        'dataloader_multiprocessing_context': None,
        'dataloader_in_order': True,
        'remove_unused_columns': True,
        'label_names': None,
        'train_sampling_strategy': 'random',
        'length_column_name': 'length',
        'ddp_find_unused_parameters': None,
        'ddp_bucket_cap_mb': None,
        'ddp_broadcast_buffers': None,
        'ddp_static_graph': None,
        'ddp_backend': None,
        'ddp_timeout': 1800,
        'fsdp': None,
        'fsdp_config': None,
        'deepspeed': None,
        'debug': '',
        'skip_memory_metrics': True,
        'do_train': False,
        'do_eval': False,
        'do_predict': False,
        'resume_from_checkpoint': None,
        'local_rank': -1,
    },
}

GPT2_CONFIG: dict[str, dict[str, object]] = {  # GPT2Config().to_dict(); transformers_version left out (None)
    "5.24": {
        'transformers_version': None,
        'architectures': None,
        'output_hidden_states': False,
        'return_dict': True,
        'dtype': None,
        'chunk_size_feed_forward': 0,
        'is_encoder_decoder': False,
        'id2label': {'0': 'LABEL_0', '1': 'LABEL_1'},
        'label2id': {'LABEL_0': 0, 'LABEL_1': 1},
        'problem_type': None,
        'vocab_size': 50257,
        'n_positions': 1024,
        'n_embd': 768,
        'n_layer': 12,
        'n_head': 12,
        'n_inner': None,
        'activation_function': 'gelu_new',
        'resid_pdrop': 0.1,
        'embd_pdrop': 0.1,
        'attn_pdrop': 0.1,
        'layer_norm_epsilon': 1e-05,
        'initializer_range': 0.02,
        'summary_type': 'cls_index',
        'summary_use_proj': True,
        'summary_activation': None,
        'summary_proj_to_labels': True,
        'summary_first_dropout': 0.1,
        'scale_attn_weights': True,
        'use_cache': True,
        'bos_token_id': 50256,
        'eos_token_id': 50256,
        'pad_token_id': None,
        'scale_attn_by_inverse_layer_idx': False,
        'reorder_and_upcast_attn': False,
        'add_cross_attention': False,
        'tie_word_embeddings': True,
        '_name_or_path': '',
        'model_type': 'gpt2',
        'output_attentions': False,
    },
}


def release(version: str | None) -> str | None:
    """'5.24.0' -> '5.24' (the key of the tables); None for None or a version without two numeric parts."""
    if not version:
        return None
    parts = str(version).split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not "".join(c for c in parts[1] if c.isdigit()):
        return None
    return f"{parts[0]}.{''.join(c for c in parts[1] if c.isdigit())}"


def installed_transformers() -> str | None:
    """The installed transformers' version, read from its package metadata (transformers is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return None


def training_arguments_fields(version: str | None = None) -> dict[str, object] | None:
    """name -> declared default of TrainingArguments in `version` (default: the installed one); None when that
    release has no entry here."""
    return TRAINING_ARGUMENTS.get(release(version or installed_transformers()) or "")


def gpt2_config_fields(version: str | None = None) -> dict[str, object] | None:
    """name -> default of GPT2Config in `version` (default: the installed one); None when it has no entry here."""
    return GPT2_CONFIG.get(release(version or installed_transformers()) or "")


def declared_defaults(version: str | None = None) -> dict[str, object]:
    """TrainingArguments' declared defaults in `version`: the checked-in entry, else (a release without one) those of
    the installed transformers, which is imported for it."""
    listed = training_arguments_fields(version)
    return listed if listed is not None else live_tables()[0]


def json_value(value):
    """The stable JSON form of a TrainingArguments or config value: what a manifest records and a resume compares
    (enums as their values, dataclasses as mappings, tuples as lists, sets sorted, keys as strings, anything else
    as its str)."""
    if isinstance(value, enum.Enum):
        return json_value(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_value(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((json_value(v) for v in value), key=repr)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def live_tables() -> tuple[dict[str, object], dict[str, object]]:
    """(TrainingArguments, GPT2Config) fields and defaults of the installed transformers (imports it)."""
    from transformers import AutoConfig, TrainingArguments

    training = {f.name: json_value(f.default_factory() if f.default is dataclasses.MISSING else f.default)
                for f in dataclasses.fields(TrainingArguments) if f.init}
    gpt2 = {**json_value(AutoConfig.for_model("gpt2").to_dict()), "transformers_version": None}
    return training, gpt2


def problems() -> list[str]:
    """How the installed release's entries differ from the installed classes, one line per field (empty: they
    agree). tests/unit/test_compat.py asserts there is none."""
    version = installed_transformers()
    key = release(version)
    if key not in TRAINING_ARGUMENTS or key not in GPT2_CONFIG:
        return [f"transformers {version} has no entry in gptresume/config/hf_fields.py: add the one "
                "`python -m gptresume.config.hf_fields` prints (and check the resume policy's field classes in "
                "gptresume/resume/changes.py against the fields it adds)"]
    training, gpt2 = live_tables()
    return differences(f"TrainingArguments ({version})", TRAINING_ARGUMENTS[key], training) + differences(
        f"GPT2Config ({version})", GPT2_CONFIG[key], gpt2)


def differences(what: str, listed: dict, live: dict) -> list[str]:
    """A line per field added, removed or with another default in `live` than in `listed`."""
    out = [f"{what}.{k}: not in the checked-in list (a new field)" for k in live if k not in listed]
    out += [f"{what}.{k}: in the checked-in list but no longer a field" for k in listed if k not in live]
    out += [f"{what}.{k}: default {live[k]!r}, the checked-in list says {listed[k]!r}" for k in live
            if k in listed and live[k] != listed[k]]
    return out


def main() -> int:
    """Print the entries of the installed release, to add to the tables above."""
    training, gpt2 = live_tables()
    key = release(installed_transformers())
    for name, table in (("TRAINING_ARGUMENTS", training), ("GPT2_CONFIG", gpt2)):
        print(f"{name}[{key!r}] = {{\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in table.items()) + "}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
