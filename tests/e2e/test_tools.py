"""The tools around a run (status, export, generate, eval, plot, TensorBoard), against one real run: 12 steps,
stopped at step 6, its newest checkpoint damaged, resumed from step 4 (so history has a resume that skipped a
checkpoint, and the interrupted process logged steps 5-6 that the resumed one logs again)."""

import json
import math
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, assert_refused, read_metrics, run_cli, write_config

STOP, RESUMED_FROM, MAX_STEPS = 6, 4, 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tools")
    config = write_config(tmp, train={"report_to": "tensorboard"})
    # CI=true makes Transformers' log records also reach the root handler; the two runs cover both paths
    first = run_cli(tmp, "train", config, "--stop-at-step", STOP, env={"CI": "true"})
    assert first.returncode == 75, first.stdout + first.stderr
    run_dir = tmp / "run"
    with open(run_dir / f"checkpoint-{STOP}" / "model.safetensors", "r+b") as f:
        f.truncate(100)  # a damaged newest checkpoint: the resume takes checkpoint-4 and skips it
    second = run_cli(tmp, "train", config, env={"CI": "false"})
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"checkpoint-{RESUMED_FROM}" in second.stdout
    metrics = read_metrics(run_dir)
    return SimpleNamespace(tmp=tmp, dir=run_dir, config=config, metrics=metrics,
                           outputs=[first.stdout + first.stderr, second.stdout + second.stderr],
                           eval_loss={r["step"]: r["eval_loss"] for r in metrics if "eval_loss" in r},
                           loss={r["step"]: r["loss"] for r in metrics if "loss" in r})


@pytest.mark.slow
def test_training_output_carries_none_of_the_known_spurious_warnings(run):
    """Transformers' warnings that are wrong for gptresume's runs (logs.NOISE says why) are dropped; a resume and an
    evaluation happened, so each had its chance to appear."""
    from gptresume.logs import NOISE

    assert run.eval_loss and "Resuming from" in run.outputs[1]
    for out in run.outputs:
        assert "step " in out and not [n for n in NOISE if n in out], out


# ---------------------------------------------------------------- status


@pytest.mark.slow
def test_status_shows_checkpoints_resume_choice_and_history(run):
    result = run_cli(run.tmp, "status", run.dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "checkpoint-12" in out and "checkpoint-8" in out
    assert "train --resume auto: checkpoint-12" in out and "complete: yes" in out
    history = [line for line in out.splitlines() if line.startswith("  20")]
    assert [line.split()[2] for line in history] == ["start", "stopped", "resume", "complete"]
    assert f"from checkpoint-{RESUMED_FROM}; skipped checkpoint-{STOP} (model.safetensors: wrong size" in history[2]

    from gptresume.tools.status import collect_status

    status = collect_status(run.dir)
    rows = {r.name: r for r in status.checkpoints}
    for step in (8, 12):  # the numbers are the ones the run logged at that step
        row = rows[f"checkpoint-{step}"]
        assert row.valid and row.loss == run.loss[step] and row.eval_loss == run.eval_loss[step]
        assert row.learning_rate == next(r["learning_rate"] for r in run.metrics if r["step"] == step and "loss" in r)
        assert row.size_bytes > 100_000 and row.created
    assert status.complete and status.global_step == MAX_STEPS and status.skipped == {}


@pytest.mark.slow
def test_status_after_a_corrupted_checkpoint_names_it_and_the_fallback(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run.dir, copy)
    model = copy / "checkpoint-12" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different contents: only the hash finds it
    model.write_bytes(bytes(data))

    from gptresume.tools.status import collect_status, format_status

    status = collect_status(copy)
    assert status.resume_from == "checkpoint-8" and not status.complete
    assert status.skipped == {"checkpoint-12": ["model.safetensors: wrong xxh3_128 (contents changed since the "
                                                "checkpoint was committed)"]}
    text = format_status(status)
    assert "INVALID: model.safetensors: wrong xxh3_128" in text
    assert "train --resume auto: checkpoint-8" in text and "skips checkpoint-12: model.safetensors" in text
    assert "complete: no" in text


# ---------------------------------------------------------------- export


@pytest.mark.slow
def test_export_loads_with_auto_classes_and_pipeline(run, tmp_path, capsys):
    out = tmp_path / "exported"
    result = run_cli(run.tmp, "export", run.dir / "checkpoint-12", out)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert not names & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin",
                        "manifest.json"}
    assert (out / "model.safetensors").read_bytes() == (run.dir / "checkpoint-12" / "model.safetensors").read_bytes()

    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 2 and tokenizer.eos_token == "<|endoftext|>"
    generated = pipeline("text-generation", model=str(out))("The", max_new_tokens=5, do_sample=False)
    assert generated[0]["generated_text"].startswith("The") and len(generated[0]["generated_text"]) > 3

    assert_refused(main_in_process(capsys, "export", run.dir / "checkpoint-8", out), "not empty", "--force")
    assert (out / "model.safetensors").read_bytes() == (run.dir / "checkpoint-12" / "model.safetensors").read_bytes()
    forced = main_in_process(capsys, "export", run.dir / "checkpoint-8", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "model.safetensors").read_bytes() == (run.dir / "checkpoint-8" / "model.safetensors").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary directory left behind


@pytest.mark.slow
def test_export_refuses_an_invalid_checkpoint(run, tmp_path):
    broken = tmp_path / "checkpoint-12"
    shutil.copytree(run.dir / "checkpoint-12", broken)
    (broken / "config.json").write_text("{}")
    assert_refused(run_cli(run.tmp, "export", broken, tmp_path / "out"), "not a valid checkpoint",
                   "config.json: wrong size")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- generate


@pytest.mark.slow
def test_generate_is_repeatable_with_a_seed(run):
    args = ("generate", run.dir, "--prompt", "The", "--max-new-tokens", "20")
    first, second = run_cli(run.tmp, *args), run_cli(run.tmp, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("The") and len(first.stdout) > 10
    assert "final" in first.stderr  # a finished run generates from final/

    from gptresume.tools.generate import GenerateOptions, generate

    same, _ = generate(run.dir, GenerateOptions(prompt="The", max_new_tokens=20))
    other, _ = generate(run.dir, GenerateOptions(prompt="The", max_new_tokens=20, seed=1))
    assert same == [first.stdout.rstrip("\n")] and other != same
    three, _ = generate(run.dir, GenerateOptions(prompt="The", max_new_tokens=20, num_samples=3, seed=1))
    assert len(set(three)) == 3 and all(t.startswith("The") for t in three)
    # final/ and checkpoint-12 hold the same weights: greedy decoding agrees
    greedy = [generate(p, GenerateOptions(prompt="def", max_new_tokens=8, greedy=True))[0]
              for p in (run.dir / "final", run.dir / "checkpoint-12")]
    assert greedy[0] == greedy[1]
    capped, _ = generate(run.dir, GenerateOptions(prompt="The", max_new_tokens=500, greedy=True))
    assert len(capped) == 1  # capped at the model's 32 positions instead of failing


# ---------------------------------------------------------------- eval


@pytest.mark.slow
def test_eval_matches_the_trainers_eval_loss(run):
    result = run_cli(run.tmp, "eval", run.dir / "checkpoint-8", "--json")
    assert result.returncode == 0, result.stderr
    logged = run.eval_loss[8]
    assert math.isclose(json.loads(result.stdout)["loss"], logged, rel_tol=1e-5)

    from gptresume.tools.evaluate import evaluate

    for path in (run.dir / "checkpoint-12", run.dir):  # a run evaluates its final/ model: step 12's weights
        ev = evaluate(path)
        assert math.isclose(ev.loss, run.eval_loss[12], rel_tol=1e-5), (path, ev.loss, run.eval_loss[12])
        assert ev.blocks == 66 and ev.block_size == 32
        # the collator masks each block's first label, so Trainer's loss is the mean per predicted token
        assert math.isclose(ev.token_loss, ev.loss, rel_tol=1e-5)
    assert math.isclose(evaluate(run.dir / "checkpoint-12", batch_size=5).loss, run.eval_loss[12], rel_tol=1e-5)


@pytest.mark.slow
def test_eval_on_text_files_packs_like_training(run):
    from transformers import AutoTokenizer

    from gptresume.config import DataConfig
    from gptresume.data import load_texts, pack
    from gptresume.tools.evaluate import evaluate

    corpus = run.tmp / "corpus.txt"
    ev = evaluate(run.dir, data_files=[str(corpus)])  # the run's block size and text unit (paragraph)
    texts = load_texts(DataConfig(source=str(corpus), text_unit="paragraph"))
    blocks, _ = pack(texts, AutoTokenizer.from_pretrained(run.dir / "final"), 32)
    assert ev.block_size == 32 and ev.blocks == len(blocks) > 66 and "paragraph" in ev.data
    assert 0 < ev.loss < math.log(400) + 1 and ev.perplexity == pytest.approx(math.exp(ev.loss))


# ---------------------------------------------------------------- plot


@pytest.mark.slow
def test_plot_marks_each_resume_on_continuous_curves(run, tmp_path):
    from matplotlib.image import imread

    from gptresume.rundir import read_history
    from gptresume.tools.plot import plot_run

    png = tmp_path / "run.png"
    resumes = plot_run(run.dir, png)
    history = read_history(run.dir)
    assert resumes == [e["step"] for e in history if e["event"] == "resume"] == [RESUMED_FROM]
    assert png.stat().st_size > 20_000
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 600
    assert sorted(run.loss) == list(range(1, MAX_STEPS + 1))  # the curve it drew: one point per step, no repeats


# ---------------------------------------------------------------- TensorBoard


@pytest.mark.slow
def test_tensorboard_is_one_curve_across_the_resume(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = run.dir / "tensorboard"
    files = sorted(tb.glob("events.out.tfevents.*"))
    assert len(files) == 2  # one per process, in one directory
    per_file = []
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        per_file.append([e.step for e in acc.Scalars("train/loss")])
    assert per_file == [list(range(1, STOP + 1)), list(range(RESUMED_FROM + 1, MAX_STEPS + 1))]  # they overlap

    acc = EventAccumulator(str(tb))
    acc.Reload()
    for tag in ("train/loss", "train/learning_rate", "eval/loss"):
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), (tag, steps)  # strictly increasing: no duplicate after the resume
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, MAX_STEPS + 1))
    assert [e.step for e in acc.Scalars("eval/loss")] == [4, 8, 12]
    # the steps after the resume are the resumed process's values (the ones in metrics.jsonl)
    for e in acc.Scalars("train/loss"):
        assert e.value == pytest.approx(run.loss[e.step], rel=1e-6)


# ---------------------------------------------------------------- every command: bad paths, help, imports


def test_bad_paths_exit_2_with_one_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    missing = tmp_path / "missing"
    cases = [
        (("status", missing), "does not exist"),
        (("status", tmp_path / "empty"), "not a run directory"),
        (("export", missing, tmp_path / "out"), "does not exist"),
        (("generate", tmp_path / "empty", "--prompt", "x"), "not a run, a checkpoint or a model directory"),
        (("eval", tmp_path / "file.txt"), "not a directory"),
        (("eval", tmp_path / "empty"), "not a run, a checkpoint or a model directory"),
        (("plot", missing, "-o", tmp_path / "x.png"), "does not exist"),
        (("plot", tmp_path / "empty", "-o", tmp_path / "x.png"), "not a run directory"),
    ]
    for args, fragment in cases:
        assert_refused(main_in_process(capsys, *args), args[0] + ":", fragment)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.png").exists()
    # and as a real process: exit status 2, the one message, no traceback
    assert_refused(run_cli(tmp_path, "generate", missing, "--prompt", "x"), "generate:", "does not exist")


def main_in_process(capsys, *args):
    """cli.main in this process (no interpreter start-up), returned like subprocess.run's result."""
    from gptresume.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def test_tool_help_texts_show_examples(capsys):
    from gptresume.cli import main

    for command in ("status", "export", "generate", "eval", "plot"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text and f"gptresume {command} " in text, command


def test_tools_do_not_import_the_training_path():
    code = ("import sys, gptresume.cli, gptresume.tools.status, gptresume.tools.export, gptresume.tools.generate, "
            "gptresume.tools.evaluate, gptresume.tools.plot; "
            "print([m for m in sys.modules if m.startswith('gptresume.training') or m == 'transformers.trainer'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
