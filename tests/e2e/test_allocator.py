"""allocator.py: large CPU tensors freed by one step are reused by the next (no fresh pages each time, once the
heap has grown to the step's size), and the setting changes no number a run computes."""

import subprocess
import sys
import textwrap

import pytest

from conftest import assert_bitwise_equal, child_env, final_weights, run_cli, train_losses, write_config

PAGE_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from gptresume.allocator import keep_freed_memory
    applied = keep_freed_memory()
    for _ in range(20):  # 64 MB, like GPT-2's logits: above glibc's largest mmap threshold. The first few
        x = torch.ones(16 * 2**20)  # grow the heap (an aligned request does not fit the freed chunk exactly);
        del x  # after that, a training step's allocations are served from freed memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        x = torch.ones(16 * 2**20)
        del x
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults(tmp_path, setting: str) -> tuple[str, int]:
    env = {**child_env(tmp_path), "GPTRESUME_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", PAGE_FAULTS], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_a_large_tensor_freed_and_allocated_again_reuses_its_pages(tmp_path):
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the setting applies to glibc only")
    applied, kept = page_faults(tmp_path, "")
    default_applied, default = page_faults(tmp_path, "system")
    assert (applied, default_applied) == ("True", "False")
    assert default > 10 * 16384 * 0.9  # glibc's default: every 64 MB allocation faults in its 16,384 pages again
    assert kept < default / 20


@pytest.mark.slow
def test_the_allocator_setting_changes_no_loss_and_no_weight(tmp_path):
    config = write_config(tmp_path, train={"per_device_train_batch_size": 16, "max_steps": 6})
    runs = {}
    for setting in ("", "system"):
        run = tmp_path / f"run-{setting or 'kept'}"
        res = run_cli(tmp_path, "train", config, "--set", f"train.output_dir={run}",
                      env={"GPTRESUME_MALLOC": setting})
        assert res.returncode == 0, res.stdout + res.stderr
        runs[setting] = run
    assert train_losses(runs[""]) == train_losses(runs["system"]) and len(train_losses(runs[""])) == 6
    assert_bitwise_equal(final_weights(runs[""]), final_weights(runs["system"]))
