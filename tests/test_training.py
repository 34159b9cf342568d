"""`sharedllm train` on a tiny random model: outputs, exact resume, LoRA placement, 2-process DDP."""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sharedllm import data, training
from sharedllm.modeling import SharedLLMForCausalLM

# Sample = 2 chunks of 16 + a decoder window of 32 = 64 tokens (one character = one token).
TINY_KNOBS = ["--n-chunks", "2", "--chunk-size", "16", "--decoder-window", "32", "--n-injected-layers", "2",
              "--tree-depth", "1", "--tokens-per-node", "4"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character tokenizer whose 100 ids fit the tiny model's 128-token vocabulary."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[c] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny Llama base with a tokenizer, and a folder of user documents (train + validation)."""
    root = tmp_path_factory.mktemp("train")
    tiny_model("llama").save_pretrained(root / "base")
    char_tokenizer().save_pretrained(root / "base")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "tree", "chunk", "query", "node", "layer", "token"]
    for split, n_docs in [("train", 6), ("validation", 2)]:
        lines = [json.dumps({"text": " ".join(rng.choice(words) for _ in range(60 + 20 * i))}) for i in range(n_docs)]
        (root / f"{split}.jsonl").write_text("\n".join(lines))
    return root


def train_args(workspace: Path, output: Path, *extra: str) -> list[str]:
    return ["--base", str(workspace / "base"), "--output", str(output),
            "--data", str(workspace / "train.jsonl"), "--validation-data", str(workspace / "validation.jsonl"),
            "--token-cache", str(workspace / "cache"), "--no-progress", *TINY_KNOBS,
            "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-2", "--warmup", "1", "--eval-windows", "3", *extra]


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharedllm train")
    training.add_arguments(parser)
    return parser


def run_cli(argv: list[str]) -> None:
    assert training.run(train_parser().parse_args(argv)) == 0


def test_train_writes_adapter_logs_curve_and_summary(workspace, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["sharedllm", "train", "--n-chunks", "2"])  # what the summary records
    run_cli(train_args(workspace, out, "--steps", "4", "--eval-every", "2", "--save-every", "2"))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples_seen"] == 4 * 2 * 2
    assert summary["tokens_seen"] == 16 * 64
    assert summary["data"]["train_documents"] == 6 and summary["data"]["validation_windows"] == 3
    assert summary["final_validation_ppl"] > 1 and "--n-chunks 2" in summary["command"]
    assert summary["hardware"]["processes"] == 1
    log = training.read_log(out / "train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["step"] for r in log if "val_ppl" in r] == [2, 4]
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert [p.name for p in training.checkpoint_dirs(out)] == ["step-0000002", "step-0000004"]

    model = SharedLLMForCausalLM.from_pretrained(out)
    trained = dict(model.named_parameters())
    assert trained["cross_attention.0.o_proj.weight"].abs().sum() > 0  # moved off its zero initialisation
    base = tiny_model("llama")
    for name, value in base.named_parameters():  # the base (and so the lower model) is untouched
        assert torch.equal(trained[f"base.{name}"], value)


def test_resume_after_interruption_is_exact(workspace, tmp_path, monkeypatch):
    steps = ["--steps", "6", "--save-every", "2", "--eval-every", "3"]
    run_cli(train_args(workspace, tmp_path / "straight", *steps))

    real_step, calls = training.train_step, []

    def crash_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated kill between checkpoints")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_cli(train_args(workspace, tmp_path / "resumed", *steps))
    monkeypatch.setattr(training, "train_step", real_step)
    assert [p.name for p in training.checkpoint_dirs(tmp_path / "resumed")][-1] == "step-0000004"
    run_cli(train_args(workspace, tmp_path / "resumed", *steps, "--resume"))

    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    logs = [training.read_log(tmp_path / run / "train_log.jsonl") for run in ("straight", "resumed")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]

    with pytest.raises(ValueError, match="knobs differ"):
        run_cli(train_args(workspace, tmp_path / "resumed", *steps, "--resume", "--lr", "5e-3"))


def test_stop_after_then_resume_matches_a_straight_run(workspace, tmp_path):
    steps = ["--steps", "4", "--save-every", "2", "--eval-every", "2"]
    run_cli(train_args(workspace, tmp_path / "straight", *steps))
    run_cli(train_args(workspace, tmp_path / "stopped", *steps, "--stop-after", "3"))
    summary = json.loads((tmp_path / "stopped" / "training_summary.json").read_text())
    assert summary["steps"] == 3 and "--stop-after 3 of a 4-step schedule" in summary["stopped_early"]
    assert training.checkpoint_dirs(tmp_path / "stopped")[-1].name == "step-0000003"
    run_cli(train_args(workspace, tmp_path / "stopped", *steps, "--resume"))
    straight, resumed = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("straight", "stopped"))
    assert all(torch.equal(value, resumed[key]) for key, value in straight.items())


def test_lora_goes_on_upper_only_layers_and_round_trips(workspace, tmp_path):
    out = tmp_path / "lora"
    run_cli(train_args(workspace, out, "--steps", "2", "--lora-rank", "4", "--eval-every", "2", "--save-every", "2"))
    weights = load_file(str(out / training.LORA_DIR / training.LORA_WEIGHTS))
    layers = {int(name.split("layers.")[1].split(".")[0]) for name in weights}
    assert layers == {2, 3}  # 4 layers, M = 2: the bottom two are the lower model and stay frozen
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at zero: it trained

    model = SharedLLMForCausalLM.from_pretrained(out)  # the LoRA comes back with the adapter
    loaded = {k: v for k, v in model.base.state_dict().items() if "lora_" in k}
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
    ids = torch.randint(4, 100, (1, 64))
    with_lora = model(ids).logits
    shutil.copytree(out, tmp_path / "no_lora", ignore=shutil.ignore_patterns(training.LORA_DIR, "checkpoints"))
    assert not torch.allclose(SharedLLMForCausalLM.from_pretrained(tmp_path / "no_lora")(ids).logits, with_lora)

    model.save_pretrained(tmp_path / "again")  # saving a loaded LoRA model keeps its LoRA
    again = SharedLLMForCausalLM.from_pretrained(tmp_path / "again")
    assert torch.equal(again(ids).logits, with_lora)


def test_gradient_checkpointing_trains_the_same(workspace, tmp_path):
    runs = {}
    for name, extra in [("plain", []), ("checkpointed", ["--gradient-checkpointing"])]:
        run_cli(train_args(workspace, tmp_path / name, "--steps", "2", "--lora-rank", "4", "--eval-every", "2",
                           "--save-every", "2", *extra))
        runs[name] = load_file(str(tmp_path / name / training.LORA_DIR / training.LORA_WEIGHTS))
        runs[name].update(load_file(str(tmp_path / name / "model.safetensors")))
    for key, value in runs["plain"].items():
        assert torch.allclose(value, runs["checkpointed"][key], atol=1e-6), key


def test_retrieval_rows_are_planted_scored_and_replayed_on_resume():
    tokenizer = char_tokenizer()
    rng = np.random.default_rng(0)
    docs = [data.TokenizedDocument(f"doc{i}", "books", rng.integers(4, 100, 2000).astype(np.uint32)) for i in range(3)]
    config = training.TrainConfig(output="", n_chunks=2, chunk_size=128, decoder_window=256, batch_size=4,
                                  retrieval_fraction=0.5)
    sampler = data.WindowSampler(data.build_windows(docs, config.sample_len), seed=0)
    state = sampler.state_dict()
    ids, labels, query = training.next_micro_batch(sampler, config, tokenizer)
    planted = query >= 0
    assert 0 < planted.sum() < len(ids)  # both kinds in one batch of 4 at this seed
    assert torch.equal(labels[~planted], ids[~planted]) and (query[~planted] == -1).all()
    for row in planted.nonzero()[:, 0]:
        scored = (labels[row] != -100).nonzero()[:, 0]
        assert scored.min() == query[row] + 1 and scored.min() >= config.n_chunks * config.chunk_size
        assert torch.equal(labels[row, scored], ids[row, scored])

    replay = data.WindowSampler(data.build_windows(docs, config.sample_len), seed=0)
    replay.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip((ids, labels, query), training.next_micro_batch(replay, config, tokenizer)))

    model = SharedLLMForCausalLM.from_base(tiny_model("llama"), chunk_size=128, decoder_window=256,
                                           n_injected_layers=2, tree_depth=1, tokens_per_node=16)
    training.configure_trainable(model, config)
    model(ids, labels=labels, query_position=query).loss.backward()
    assert model.cross_attention[0].o_proj.weight.grad.abs().sum() > 0  # o_proj starts at zero: its grad flows first
    from accelerate import Accelerator

    windows = torch.stack([torch.from_numpy(sampler.windows["books"][i].astype(np.int64)) for i in range(3)])
    accuracy = training.evaluate_retrieval(model, windows, config, tokenizer, Accelerator(cpu=True))
    assert accuracy == training.evaluate_retrieval(model, windows, config, tokenizer, Accelerator(cpu=True))
    assert 0.0 <= accuracy <= 1.0


def test_loss_curve_gets_a_retrieval_panel_when_logged(tmp_path):
    import matplotlib.image

    log = tmp_path / training.LOG_FILE
    for record in [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.9, "val_ppl": 9.0, "val_retrieval_acc": 0.5}]:
        training.append_log(log, record)
    training.plot_curves(log, tmp_path / "with.png")
    log.write_text(log.read_text().replace(', "val_retrieval_acc": 0.5', ""))
    training.plot_curves(log, tmp_path / "without.png")
    widths = [matplotlib.image.imread(tmp_path / f"{name}.png").shape[1] for name in ("with", "without")]
    assert widths[0] > widths[1]  # three panels against two


def test_init_adapter_starts_from_its_weights_and_checks_layers(workspace, tmp_path):
    run_cli(train_args(workspace, tmp_path / "first", "--steps", "2", "--eval-every", "2", "--save-every", "2"))
    run_cli(train_args(workspace, tmp_path / "again", "--steps", "1", "--lr", "0", "--eval-every", "1",
                       "--save-every", "1", "--init-adapter", str(tmp_path / "first")))
    first, again = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("first", "again"))
    assert first["cross_attention.0.o_proj.weight"].abs().sum() > 0
    assert all(torch.equal(value, again[key]) for key, value in first.items())  # lr 0: nothing moved
    with pytest.raises(ValueError, match="injected layers"):
        run_cli(train_args(workspace, tmp_path / "bad", "--steps", "1", "--n-injected-layers", "1",
                           "--init-adapter", str(tmp_path / "first")))
    with pytest.raises(ValueError, match="retrieval-fraction"):
        run_cli(train_args(workspace, tmp_path / "bad", "--steps", "1", "--retrieval-fraction", "1.5"))


def test_help_names_the_upper_only_lora_and_lr_choice(capsys):
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "upper-only layers M..N-1" in text and "1e-5 with 128 sequences" in text


DDP_SCRIPT = """
import argparse
import os
import sys
import torch
from safetensors.torch import save_file
from sharedllm import training

captured = {}
real_build = training.build_model
def spy(config):
    captured["model"], tokenizer = real_build(config)
    return captured["model"], tokenizer
training.build_model = spy
parser = argparse.ArgumentParser()
training.add_arguments(parser)
args = parser.parse_args(sys.argv[1:])
training.run(args)
rank = int(os.environ["RANK"])  # set by torchrun (the process group is gone after training)
trainable = {n: p.detach().contiguous() for n, p in captured["model"].named_parameters() if p.requires_grad}
save_file(trainable, f"{args.output}/rank{rank}.safetensors")
"""


@pytest.mark.slow  # about 25 s on 2 cores, mostly two fresh interpreters importing torch and transformers
def test_two_process_ddp_ranks_end_identical(workspace, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out = tmp_path / "ddp"
    argv = train_args(workspace, out, "--steps", "3", "--eval-every", "3", "--save-every", "3", "--batch-size", "1")
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    # torchrun sets RANK / WORLD_SIZE; Accelerator then runs DDP over gloo on CPU (what `accelerate launch
    # --config_file accelerate_ddp.yaml` does on GPUs with nccl). `accelerate launch --cpu` would need mpirun.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), *argv]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers, none left behind
        output, _ = process.communicate()
    assert process.returncode == 0, output[-4000:]
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["hardware"]["processes"] == 2 and summary["samples_seen"] == 3 * 1 * 2 * 2
    assert ranks[0]["cross_attention.0.o_proj.weight"].abs().sum() > 0

    # Rank r takes samples r, r+2, ... of the global stream and DDP averages gradients, so 2 ranks x batch 1
    # is one process with batch 2. (Were the ranks not sharded, or not synchronised, this would differ.)
    single = tmp_path / "single"
    run_cli(train_args(workspace, single, "--steps", "3", "--eval-every", "3", "--save-every", "3", "--batch-size", "2"))
    for name, value in load_file(str(single / "model.safetensors")).items():
        assert torch.allclose(value, ranks[0][name], atol=1e-6), name


def test_copy_and_distill_run_trains_and_records_its_knobs(workspace, tmp_path):
    """A run with copy exercises, the distillation term, exact leaves and attention selection trains the adapter."""
    out = tmp_path / "copy-distill"
    run_cli(train_args(workspace, out, "--steps", "2", "--eval-every", "2", "--save-every", "2",
                       "--copy-fraction", "0.5", "--distill-weight", "2", "--distill-top-k", "5",
                       "--leaf-tokens-per-node", "8", "--tree-selection", "attention"))
    model = SharedLLMForCausalLM.from_pretrained(out)
    assert model.config.leaf_tokens_per_node == 8 and model.config.tree_selection == "attention"
    assert model.cross_attention[0].o_proj.weight.abs().sum() > 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["knobs"]["distill_weight"] == 2 and summary["knobs"]["copy_fraction"] == 0.5


def test_copy_rows_repeat_their_context():
    rng = np.random.default_rng(0)
    docs = [data.TokenizedDocument(f"doc{i}", "books", rng.integers(4, 100, 2000).astype(np.uint32)) for i in range(3)]
    config = training.TrainConfig(output="", n_chunks=2, chunk_size=64, decoder_window=64, batch_size=8,
                                  copy_fraction=0.5)
    sampler = data.WindowSampler(data.build_windows(docs, config.sample_len), seed=0)
    ids, labels, query = training.next_micro_batch(sampler, config, char_tokenizer())
    context = config.n_chunks * config.chunk_size
    copied = [row for row in range(len(ids)) if any(
        torch.equal(ids[row, context:], ids[row, s:s + 64]) for s in range(context - 64 + 1))]
    assert 0 < len(copied) < len(ids) and torch.equal(labels, ids)
