"""`sharedllm train`: train the SharedLLM adapter on long documents with accelerate (1 CPU .. many GPUs).

What is trained (method.md, "Training"): by default only the cross-attention (norm, q_proj, o_proj) of the
M injected layers; the base model, hence the lower model, stays frozen, so the result is a small adapter
on an unchanged base. Optionally LoRA on the upper-only layers M..N-1 (never the bottom M layers, which
are also the lower model: training them would silently change the context encoder too). Joint injection adds no
module: there the LoRA, on every layer, is what trains (`sharedllm.lora`).

Output folder (a new run needs an empty or new folder, or --overwrite; --resume continues the run recorded there):
  run.json                         the run's identity and knobs; checkpoints carry its id, so a run never
                                   resumes, or deletes, a checkpoint of another run
  model.safetensors, config.json   the adapter (`SharedLLMForCausalLM.from_pretrained(output)`)
  upper_lora/                      the LoRA, if --lora-rank > 0 (`load_upper_lora`)
  checkpoints/step-NNNNNNN/        trainable weights, optimizer, scheduler, RNG and sampler state
  train_log.jsonl, loss_curve.png  one record per step: loss, lr, tokens, elapsed_s, and at an evaluation
                                   step val_loss, val_ppl (val_retrieval_acc)
  training_summary.json            knobs, data, steps, tokens, wall time, final ppl, provenance (hardware, command, commit)
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sharedllm import data, provenance
from sharedllm.cli import InputError
from sharedllm.config import ADAPTER_SHAPE_KNOBS, KNOB_DEFAULTS, SharedLLMConfig
from sharedllm.distillation import check_teacher_window, teacher_window_logits, topk_distillation_loss
from sharedllm.flags import knob_flag
from sharedllm.loading import load_causal_lm
from sharedllm.lora import (
    LORA_DIR, add_upper_lora, first_lora_layer, has_upper_lora, lora_modules, upper_lora_rank,
)
# the command's config, flags and entry (no torch: `sharedllm train --help`); importable from here as before
from sharedllm.train_cli import TrainConfig, add_arguments, run  # noqa: F401

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2  # the newest two: if the newest is damaged by a crash mid-copy, one more remains
LOG_FILE = "train_log.jsonl"
RUN_FILE = "run.json"
LEGACY_RUN_ID = "legacy"  # checkpoints written before runs had an identity
# Everything `train` writes into --output: what --overwrite removes before a new run (other files are left alone).
RUN_OUTPUTS = (RUN_FILE, CHECKPOINTS, LOG_FILE, "loss_curve.png", "training_summary.json", "model.safetensors",
               "config.json", "generation_config.json", LORA_DIR,
               # the tokenizer save_pretrained writes beside the adapter
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
# Knobs that may change between an interrupted run and its resumption without changing the result.
RESUME_FREE_KNOBS = {"resume", "overwrite", "eval_every", "save_every", "log_every", "command", "progress",
                     "stop_after", "eval_retrieval"}


# --------------------------------------------------------------------------------------------------
# Knobs and the output folder (checked before anything is loaded)


def validate_config(config: TrainConfig) -> None:
    """Refuse knobs that would train nothing, crash later, or be silently ignored (one message each)."""
    at_least = {"steps": 1, "batch_size": 1, "grad_accum": 1, "n_chunks": 1, "decoder_window": 2, "warmup": 0,
                "lora_rank": 0, "eval_every": 1, "eval_windows": 1, "save_every": 1, "log_every": 1}
    for knob, low in at_least.items():
        if getattr(config, knob) < low:
            raise InputError(f"--{knob.replace('_', '-')} must be at least {low}, got {getattr(config, knob)}")
    if config.knobs["full_logits"]:
        raise InputError("--full-logits does not apply to training (the loss reads one decoder window, queried at its "
                         "last token); switch it on when loading the adapter: from_pretrained(..., full_logits=True)")
    if config.knobs["injection"] == "joint" and not config.lora_rank:
        raise InputError("--injection joint adds no module, so without --lora-rank there is nothing to train; "
                         "train a LoRA on its layers (--lora-rank 8), or evaluate it untrained: "
                         "sharedllm eval ... --adapter none --injection joint --n-injected-layers N")
    try:  # the model's knobs, checked by their owner now rather than after the base model has loaded
        SharedLLMConfig(**config.knobs)
    except ValueError as err:
        raise InputError(str(err)) from err
    for knob in ("lr", "weight_decay", "max_grad_norm"):
        if not getattr(config, knob) >= 0:  # also refuses NaN
            raise InputError(f"--{knob.replace('_', '-')} must be >= 0, got {getattr(config, knob)}")
    for knob in ("stride", "max_train_docs"):
        if getattr(config, knob) is not None and getattr(config, knob) < 1:
            raise InputError(f"--{knob.replace('_', '-')} must be at least 1, got {getattr(config, knob)}")
    if config.warmup > config.steps:
        raise InputError(f"--warmup {config.warmup} is longer than --steps {config.steps}: the learning rate would "
                         "never reach --lr")
    if config.stop_after is not None and not 1 <= config.stop_after <= config.steps:
        raise InputError(f"--stop-after must be in [1, --steps = {config.steps}], got {config.stop_after}")
    if not 0.0 <= config.retrieval_fraction <= 1.0:
        raise InputError(f"--retrieval-fraction must be in [0, 1], got {config.retrieval_fraction}")
    if not 1 <= config.retrieval_facts <= len(data.RETRIEVAL_NAMES):
        raise InputError(f"--retrieval-facts must be in [1, {len(data.RETRIEVAL_NAMES)}] (one name per fact), got "
                         f"{config.retrieval_facts}")
    if not 1 <= config.retrieval_wordings <= len(data.RETRIEVAL_WORDINGS):
        raise InputError(f"--retrieval-wordings must be in [1, {len(data.RETRIEVAL_WORDINGS)}], got "
                         f"{config.retrieval_wordings}")
    if not 0 <= config.retrieval_window_facts <= len(data.RETRIEVAL_NAMES) - config.retrieval_facts:
        raise InputError(f"--retrieval-window-facts must be in [0, {len(data.RETRIEVAL_NAMES)} - --retrieval-facts] "
                         f"(one name per fact), got {config.retrieval_window_facts}")
    if not 0.0 <= config.copy_fraction <= 1.0 - config.retrieval_fraction:
        raise InputError(f"--copy-fraction must be in [0, 1 - retrieval fraction], got {config.copy_fraction}")
    if config.copy_fraction and config.decoder_window > config.context_len:
        raise InputError("--copy-fraction needs a decoder window no longer than the context (n-chunks x chunk-size)")
    if not (config.distill_weight >= 0 and config.distill_top_k >= 1):
        raise InputError(f"--distill-weight must be >= 0 and --distill-top-k >= 1, got {config.distill_weight}, "
                         f"{config.distill_top_k}")
    if config.resume and config.overwrite:
        raise InputError("--resume continues the run in --output, --overwrite replaces it: pass one of them")
    if config.data is None and config.validation_data is not None:
        raise InputError("--validation-data goes with --data (the asset corpora have their own validation split)")
    if config.data is not None and (config.domains or config.domain_weights):
        raise InputError("--domains chooses asset corpora; with --data your files are the training data: pass one")


def _listing(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_run(output: Path) -> dict | None:
    """The run recorded in `output`: run.json, or an older run's checkpoints (adopted as the legacy run)."""
    if (output / RUN_FILE).is_file():
        return json.loads((output / RUN_FILE).read_text())
    if checkpoint_dirs(output):
        return {"run_id": LEGACY_RUN_ID, "knobs": None}
    return None


def check_output(config: TrainConfig) -> None:
    """Refuse to write where a run would destroy or mix data (read-only: every rank may call it)."""
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file, not a folder")
    if config.init_adapter is not None and Path(config.init_adapter).resolve() == output.resolve():
        raise InputError(f"--init-adapter and --output are the same folder ({output}): the new run would replace the "
                         "adapter it starts from (--overwrite deletes it before it loads); write the run to another "
                         "folder")
    if config.resume and (not output.exists() or not any(output.iterdir())):
        raise InputError(f"--resume: there is no run to continue in {output} (the folder "
                         f"{'does not exist' if not output.exists() else 'is empty'}); leave out --resume to start one")
    # A run that failed before its first step left only run.json: nothing to lose, a new run may take the folder.
    if not output.exists() or config.overwrite or all(p.name == RUN_FILE for p in output.iterdir()):
        return
    run = _read_run(output)
    if run is None:
        if config.resume:
            raise InputError(f"--resume: {output} holds no training run ({RUN_FILE} and checkpoints missing; it "
                             f"has {_listing(output)})")
        raise InputError(f"--output {output} is not empty and holds no training run ({_listing(output)}); choose "
                         f"a new folder, or pass --overwrite to write the run there (replaces {', '.join(RUN_OUTPUTS)})")
    if not config.resume:
        newest = checkpoint_dirs(output, run["run_id"])
        raise InputError(f"--output {output} holds another training run"
                         + (f" (newest checkpoint {newest[-1].name})" if newest else "")
                         + "; pass --resume to continue it, --overwrite to replace it (deletes its checkpoints, "
                           "log and adapter), or choose a new folder")
    if run["knobs"] is not None:
        changed = _changed_knobs(run["knobs"], config)
        if changed:
            raise InputError(f"cannot resume the run in {output}: these knobs differ from it (run, now): {changed}")


def _changed_knobs(saved: dict, config: TrainConfig) -> dict:
    # a SharedLLM knob that train did not expose yet when the run was recorded ran at the table's default
    saved = {**{k: v for k, v in KNOB_DEFAULTS.items() if k not in saved}, **saved}
    return {k: (saved.get(k), v) for k, v in _knobs(config).items() if k not in RESUME_FREE_KNOBS and saved.get(k) != v}


def start_run(config: TrainConfig, accelerator) -> str:
    """Set up `output` for this run (after `check_output`) and return the run's id, the same on every rank."""
    output = Path(config.output)
    accelerator.wait_for_everyone()  # every rank has checked the folder before the main process changes it
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        nothing_yet = all(p.name == RUN_FILE for p in output.iterdir())
        run = None if config.overwrite or nothing_yet else _read_run(output)
        if run is None:
            for name in RUN_OUTPUTS if config.overwrite else ():
                path = output / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            run = {"run_id": uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "knobs": {k: v for k, v in _knobs(config).items() if k not in RESUME_FREE_KNOBS}}
            provenance.write_json(output / RUN_FILE, run)
        elif not (output / RUN_FILE).exists():  # adopt an older run's checkpoints; its knobs are checked on load
            provenance.write_json(output / RUN_FILE, run)
    accelerator.wait_for_everyone()
    return json.loads((output / RUN_FILE).read_text())["run_id"]


class StopOnInterrupt:
    """The first Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption: SLURM, Kubernetes) asks the loop to stop after
    the current step, with a checkpoint; a second one interrupts at once. Outside the main thread (where handlers
    cannot be set) both keep their defaults."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s: finishing this step and saving a checkpoint (a second signal stops at once)",
                       signal.Signals(signum).name)

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)


# --------------------------------------------------------------------------------------------------
# Model


def check_distillation_window(config: TrainConfig) -> None:
    """The distillation teacher reads whole samples with full attention: they must fit the base's native window
    (read from its config, before any model or data loads)."""
    if not config.distill_weight:
        return
    from transformers import AutoConfig

    from sharedllm.assets import default_model_path

    base_config = AutoConfig.from_pretrained(config.base or str(default_model_path()))
    try:
        check_teacher_window(base_config, config.sample_len)
    except ValueError as err:
        raise InputError(f"--distill-weight: {err} (--n-chunks x --chunk-size + --decoder-window)") from err


def build_model(config: TrainConfig):
    """The SharedLLM model on the base and its tokenizer."""
    from sharedllm.modeling import SharedLLMForCausalLM

    if config.base is None:
        from sharedllm.assets import default_model_path

        config.base = str(default_model_path())  # recorded as such in the summary
    base, tokenizer = load_causal_lm(config.base)
    model = SharedLLMForCausalLM.from_base(base, tokenizer=tokenizer, **config.knobs)
    if config.init_adapter:
        lora = has_upper_lora(config.init_adapter)
        rank = upper_lora_rank(config.init_adapter) if lora else None
        if lora and config.lora_rank != rank:
            raise InputError(f"--init-adapter {config.init_adapter} holds a LoRA of rank {rank} ({LORA_DIR}/): train one "
                             f"of its rank (--lora-rank {rank}) to start from it, got --lora-rank {config.lora_rank}")
        # from_pretrained checks that the adapter was trained on this very base (weight fingerprint), and injects
        # its LoRA, unmerged, into that base in place: configure_trainable then trains it instead of a fresh one.
        start = SharedLLMForCausalLM.from_pretrained(config.init_adapter, base=base, merge_lora=False)
        for knob in ADAPTER_SHAPE_KNOBS[start.config.injection]:  # which modules and layers its weights fit
            if getattr(start.config, knob) != config.knobs[knob]:  # (a joint adapter's LoRA fits any M)
                raise InputError(f"--init-adapter {config.init_adapter} has {knob} {getattr(start.config, knob)}, "
                                 f"this run {config.knobs[knob]}: its weights do not fit; train with "
                                 f"{knob_flag(knob)} {getattr(start.config, knob)}")
        model.cross_attention.load_state_dict(start.cross_attention.state_dict())
    return model, tokenizer


def configure_trainable(model, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze the cross-attention (none under joint injection) and the LoRA if asked."""
    model.requires_grad_(False)
    for p in model.adapter_parameters():
        p.requires_grad_(True)
    if config.lora_rank:
        if not lora_modules(model.base):  # else --init-adapter's LoRA, already in place (build_model)
            add_upper_lora(model, config.lora_rank)
        for name, p in model.base.named_parameters():
            p.requires_grad_("lora_" in name)
    if config.gradient_checkpointing:
        # activation_checkpointing_enable is the transformers 5 name; older 5.x only has the deprecated one.
        enable = getattr(model.base, "activation_checkpointing_enable", None) or model.base.gradient_checkpointing_enable
        enable()
    return [p for p in model.parameters() if p.requires_grad]


def trainable_description(config: TrainConfig) -> str:
    injection = config.knobs["injection"]
    lora = f"LoRA r={config.lora_rank} on layers {first_lora_layer(injection, config.knobs['n_injected_layers'])}..N-1"
    if injection == "joint":  # no module of its own: the LoRA is all that trains
        return lora
    return "cross-attention" + (f" + {lora}" if config.lora_rank else "")


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------------
# Data


def _interleave_domains(documents: list, limit: int | None) -> list:
    """The first `limit` documents taking one per domain in turn, so a small limit still mixes domains."""
    if limit is None:
        return documents
    queues: dict[str, list] = {}
    for doc in documents:
        queues.setdefault(doc.domain, []).append(doc)
    chosen, depth = [], 0
    while len(chosen) < limit and any(depth < len(q) for q in queues.values()):
        chosen += [q[depth] for q in queues.values() if depth < len(q)]
        depth += 1
    return chosen[:limit]


def load_training_documents(config: TrainConfig) -> tuple[list, list, str]:
    """(train documents, validation documents, a description of the split)."""
    if config.data is not None:
        documents = data.load_user_documents(config.data)
        if config.validation_data is not None:
            train_docs, split = documents, "user data; validation from --validation-data"
            validation_docs = data.load_user_documents(config.validation_data)
            held_out = {doc.text for doc in validation_docs}
            if shared := [doc.doc_id for doc in train_docs if doc.text in held_out]:
                raise InputError(f"{len(shared)} --validation-data document(s) are also in --data (the same text, e.g. "
                                 f"{shared[0]}): validation would score text the adapter trained on; keep them apart")
        else:
            train_docs, validation_docs = data.split_documents(documents)
            split = data.split_description(len(documents))
    else:
        from sharedllm.assets import load_documents

        train_docs = load_documents("train", config.domains)
        validation_docs = load_documents("validation", config.domains)
        split = "assets: train / validation splits"
    return _interleave_domains(train_docs, config.max_train_docs), validation_docs, split


def prepare_data(config: TrainConfig, documents: tuple[list, list, str], tokenizer,
                 accelerator) -> tuple[data.WindowSampler, torch.Tensor | None, dict]:
    """The rank's training sampler, the fixed validation windows, and a summary of the data."""
    train_docs, validation_docs, split = documents
    # Rank 0 tokenises and fills the cache first; the other ranks then read it.
    with accelerator.main_process_first():
        def tokenize(docs, min_tokens):
            return data.tokenize_documents(docs, tokenizer, config.token_cache, min_tokens=min_tokens,
                                           progress=config.progress and accelerator.is_main_process)

        # packing exists to use short documents: keep every one of them for the training windows
        train_tokens = tokenize(train_docs, 1 if config.pack_documents else config.chunk_size)
        validation_tokens = tokenize(validation_docs, config.chunk_size)
    separator = tokenizer.eos_token_id if config.pack_documents else None
    try:
        windows = data.build_windows(train_tokens, config.sample_len, config.stride, config.pack_documents, separator)
    except ValueError as err:  # no training document holds one sample
        raise InputError(f"{err} (--n-chunks x --chunk-size + --decoder-window): use longer documents, smaller "
                         "knobs" + ("" if config.pack_documents else ", or --pack-documents")) from err
    sampler = data.WindowSampler(windows, config.domain_weights, config.seed,
                                 accelerator.process_index, accelerator.num_processes)
    try:
        # Non-overlapping, never packed: a fixed, honest validation set.
        validation = data.evaluation_windows(data.build_windows(validation_tokens, config.sample_len),
                                             config.eval_windows)
    except ValueError:
        logger.warning("no validation document has a full sample of %d tokens: validation is off%s", config.sample_len,
                       "" if config.data is None else " (--validation-data can give it longer documents)")
        validation = None
    summary = {
        "split": split,
        "train_documents": len(train_tokens),
        "validation_documents": len(validation_tokens),
        "train_windows": {domain: len(w) for domain, w in windows.items()},
        "validation_windows": 0 if validation is None else len(validation),
        "sample_len": config.sample_len,
        "stride": config.stride or config.sample_len // 2,
        "packed": config.pack_documents,
    }
    return sampler, validation, summary


# --------------------------------------------------------------------------------------------------
# Steps


def next_micro_batch(sampler, config: TrainConfig, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's next (ids, labels, tree query index), each (batch_size, ...).

    Plain rows are language modelling with the tree query on the last token (the paper's training choice: it sees
    the last target token; evaluation uses the leak-free last token before the scored span). A
    `retrieval_fraction` of rows, chosen by a generator seeded with the sample's global index (so resuming
    replays them exactly), get facts planted in their context and only the answers scored
    (`data.plant_retrieval_facts`).
    """
    first = sampler.samples_drawn
    ids = sampler.next_batch(config.batch_size)
    labels, query = ids.clone(), torch.full((len(ids),), -1, dtype=torch.long)
    context_len = config.context_len
    for row in range(len(ids)) if config.retrieval_fraction or config.copy_fraction else ():
        rng = np.random.default_rng([config.seed, first, sampler.rank, row])
        draw = rng.random()
        if draw < config.retrieval_fraction:
            planted = data.plant_retrieval_facts(ids[row].numpy(), context_len, tokenizer, rng,
                                                 max_facts=config.retrieval_facts,
                                                 max_window_facts=config.retrieval_window_facts,
                                                 n_wordings=config.retrieval_wordings)
            ids[row], labels[row] = torch.from_numpy(planted.ids), torch.from_numpy(planted.labels)
            query[row] = planted.query_index
        elif draw < config.retrieval_fraction + config.copy_fraction:
            ids[row] = labels[row] = torch.from_numpy(data.copy_sample(ids[row].numpy(), context_len, rng))
    return ids, labels, query


def train_step(model, sampler, config: TrainConfig, accelerator, tokenizer) -> torch.Tensor:
    """One optimiser step's forward/backward over `grad_accum` micro-batches; returns the mean (loss, distillation
    KL) as a (2,) tensor: the loss is the LM loss plus the weighted KL when distilling, the KL is 0 otherwise."""
    total = torch.zeros(2, device=accelerator.device)
    for micro in range(config.grad_accum):
        ids, labels, query = (t.to(accelerator.device) for t in next_micro_batch(sampler, config, tokenizer))
        # Only the last micro-batch all-reduces gradients across ranks.
        sync = micro == config.grad_accum - 1
        with nullcontext() if sync else accelerator.no_sync(model):
            output = model(ids, labels=labels, query_position=query)
            kl = torch.zeros((), device=accelerator.device)
            if config.distill_weight:
                teacher = teacher_window_logits(accelerator.unwrap_model(model).base, ids, output.logits.shape[1])
                kl = topk_distillation_loss(output.logits, teacher, config.distill_top_k)
            loss = output.loss + config.distill_weight * kl
            accelerator.backward(loss / config.grad_accum)
        total += torch.stack([loss.detach(), kl.detach()]) / config.grad_accum
    return total


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, config: TrainConfig, accelerator) -> float:
    """Mean next-token loss over the decoder windows of the fixed validation set (shared out over ranks)."""
    model.eval()
    shard = windows[accelerator.process_index::accelerator.num_processes]
    total = torch.zeros(2, device=accelerator.device)  # (sum of window losses, window count)
    for batch in shard.split(config.batch_size):
        batch = batch.to(accelerator.device)
        loss = model(batch, labels=batch, query_position=-1).loss  # same query choice as the train loss
        total += torch.stack([loss.float() * len(batch), torch.tensor(float(len(batch)), device=loss.device)])
    model.train()
    total = accelerator.reduce(total, reduction="sum")
    # Every window scores the same number of tokens, so the mean of window means is the token mean.
    return (total[0] / total[1]).item()


def planted_validation_answers(model, windows: torch.Tensor, i: int, config: TrainConfig, tokenizer, device):
    """Validation window i with facts planted by a fixed seed (the same facts at every call): the model's
    next-token logits over the decoder window, (Ld - 1, V), and their targets, (Ld - 1,), -100 but the answers."""
    context_len = config.context_len
    rng = np.random.default_rng([config.seed, len(windows), i, 1])
    planted = data.plant_retrieval_facts(windows[i].numpy(), context_len, tokenizer, rng)
    ids = torch.from_numpy(planted.ids.astype(np.int64))[None].to(device)
    logits = model(ids, query_position=planted.query_index).logits[0, :-1]  # logits[t] predicts window token t + 1
    return logits, torch.from_numpy(planted.labels[context_len + 1:]).to(device)


@torch.no_grad()
def evaluate_retrieval(model, windows: torch.Tensor, config: TrainConfig, tokenizer, accelerator) -> float:
    """Share of validation windows, with facts planted by a fixed seed, whose scored answers the model gets
    exactly right by greedy next-token prediction (teacher-forced): is the retrieval mix being learned?"""
    model.eval()
    total = torch.zeros(2, device=accelerator.device)  # (windows right, windows)
    for i in range(accelerator.process_index, len(windows), accelerator.num_processes):
        logits, targets = planted_validation_answers(model, windows, i, config, tokenizer, accelerator.device)
        scored = targets != -100
        right = bool((logits.argmax(-1)[scored] == targets[scored]).all())
        total += torch.tensor([float(right), 1.0], device=accelerator.device)
    model.train()
    total = accelerator.reduce(total, reduction="sum")
    return (total[0] / total[1]).item()


# --------------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(output: Path, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints, oldest first (a crash mid-write leaves only a *.tmp folder, never listed); with
    `run_id`, only those that run wrote."""
    root = Path(output) / CHECKPOINTS
    found = [p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")] if root.exists() else []
    if run_id is not None:
        found = [p for p in found if _checkpoint_run_id(p) == run_id]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _checkpoint_run_id(directory: Path) -> str | None:
    try:
        return json.loads((directory / "trainer_state.json").read_text()).get("run_id", LEGACY_RUN_ID)
    except (OSError, ValueError):  # not a checkpoint this code wrote
        return None


def save_checkpoint(output: Path, step: int, model, optimizer, scheduler, sampler, state: dict, accelerator) -> None:
    """Write to step-N.tmp, then rename: a checkpoint folder either is complete or does not exist."""
    final = output / CHECKPOINTS / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # Per rank: its RNG, and its optimizer state (identical under DDP, a different shard under ZeRO / FSDP).
    torch.save(_rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
    torch.save(optimizer.state_dict(), tmp / f"optimizer-rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trainable_state_dict(accelerator.unwrap_model(model)), str(tmp / "trainable.safetensors"))
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "sampler.json").write_text(json.dumps(sampler.state_dict()))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(output, state["run_id"])[:-KEEP_CHECKPOINTS]:  # never another run's
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def check_resumed_documents(directory: Path, data_fingerprint: str) -> None:
    """The checkpoint's sampler state counts draws from its run's windows: other documents would train on other
    samples than the run it claims to continue."""
    state = json.loads((directory / "trainer_state.json").read_text())
    if state.get("data", data_fingerprint) != data_fingerprint:  # checkpoints before 2026-12-06 record none
        raise InputError(f"cannot resume {directory}: the training or validation documents differ from the "
                         f"interrupted run's (fingerprint {state['data']} there, {data_fingerprint} now), so the "
                         "resumed run would draw other samples; restore them, or start a new run (--overwrite)")


def load_checkpoint(directory: Path, model, optimizer, scheduler, sampler, config: TrainConfig, accelerator) -> dict:
    state = json.loads((directory / "trainer_state.json").read_text())
    changed = _changed_knobs(state["config"], config)
    if changed:
        raise InputError(f"cannot resume {directory}: these knobs differ from the interrupted run "
                         f"(saved, now): {changed}")
    weights = load_file(str(directory / "trainable.safetensors"))
    params = dict(accelerator.unwrap_model(model).named_parameters())
    if set(weights) != {n for n, p in params.items() if p.requires_grad}:
        raise ValueError(f"{directory} holds other trainable parameters than this model")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    rank = accelerator.process_index
    written_by = len(list(directory.glob("rng-rank*.pt")))
    if written_by != accelerator.num_processes:
        raise ValueError(f"{directory} was written by {written_by} processes; resume with the same number")
    optimizer.load_state_dict(torch.load(directory / f"optimizer-rank{rank}.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    sampler.load_state_dict(json.loads((directory / "sampler.json").read_text()))
    _set_rng_state(torch.load(directory / f"rng-rank{rank}.pt", weights_only=False))  # numpy's state is no tensor
    return state


# --------------------------------------------------------------------------------------------------
# Logging


def _knobs(config: TrainConfig) -> dict:
    """The config as flat JSON-able values, the SharedLLM knobs beside the training options (user data objects
    become their description): what run.json, checkpoints and the summary record."""
    knobs = asdict(config)
    knobs.update(knobs.pop("knobs"))
    for key in ("data", "validation_data"):
        if knobs[key] is not None and not isinstance(knobs[key], (str, os.PathLike)):
            knobs[key] = repr(knobs[key])
        elif knobs[key] is not None:
            knobs[key] = str(knobs[key])
    return knobs


def read_log(path: Path) -> list[dict]:
    """The log's records; a last line cut short by a kill mid-write is dropped (its step is redone on resume)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
            logger.warning("%s: dropping its last line, cut short by an interrupted write", path)
    return records


def truncate_log(path: Path, step: int) -> list[dict]:
    """On resume, drop records of steps the interrupted run did after its last checkpoint (they are redone);
    returns the records kept."""
    kept = [r for r in read_log(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the window - 1 before it (fewer at the start): the trend of a noisy per-step loss."""
    sums = np.cumsum([0.0, *values])
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]


def plot_curves(log_path: Path, png_path: Path) -> None:
    """Training loss per step with its trailing mean (and the distillation KL when logged), validation
    perplexity, and validation retrieval when logged."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    kl = [(r["step"], r["distill_kl"]) for r in records if "distill_kl" in r]
    validation = [(r["step"], r["val_ppl"]) for r in records if "val_ppl" in r]
    retrieval = [(r["step"], 100 * r["val_retrieval_acc"]) for r in records if "val_retrieval_acc" in r]
    fig, axes = plt.subplots(1, 3 if retrieval else 2, figsize=(15 if retrieval else 10, 4))
    if train:
        steps, losses = zip(*train)
        window = max(1, len(losses) // 10)  # one batch of a few samples is noisy: the trend is what to read
        axes[0].plot(steps, losses, lw=0.8, alpha=0.4, label="per step")
        axes[0].plot(steps, trailing_mean(list(losses), window), lw=2, label=f"mean of the last {window} steps")
    if kl:
        axes[0].plot(*zip(*kl), lw=1, label="distillation KL alone (unweighted)")
    if train or kl:
        axes[0].legend(fontsize=8)
    terms = "decoder window LM + weighted KL" if kl else "decoder window LM"  # the KL only when distilling
    axes[0].set(xlabel="step", ylabel="loss", title=f"training loss ({terms})")
    if validation:
        axes[1].plot(*zip(*validation), marker="o")
    axes[1].set(xlabel="step", ylabel="validation perplexity", title="validation perplexity")
    if retrieval:
        axes[2].plot(*zip(*retrieval), marker="o")
        axes[2].set(xlabel="step", ylabel="answers exactly right (%)", ylim=(-5, 105),
                    title="validation retrieval (planted facts)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Training


def train(config: TrainConfig) -> Path:
    """Train the adapter; returns the output folder (loadable with `SharedLLMForCausalLM.from_pretrained`)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    validate_config(config)
    check_output(config)  # before anything slow: a refusal costs nothing
    provenance.pin_commit()  # the run's files name the code it starts with, whatever is committed meanwhile
    # bf16 autocast on GPU (fp32 master weights); plain fp32 on CPU, where bf16 matmuls are slow. cpu=True
    # is what lets several CPU processes (torchrun, tests) form a gloo process group.
    on_gpu = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision="bf16" if on_gpu else "no")
    if not accelerator.is_main_process:
        logging.getLogger("sharedllm").setLevel(logging.WARNING)
    output = Path(config.output)
    try:  # the documents before the model: a bad --data fails in a second, not after loading
        documents = load_training_documents(config)
    except (ValueError, FileNotFoundError) as err:
        raise InputError(f"{'--data' if config.data is not None else 'training corpora'}: {err}") from err
    check_distillation_window(config)  # before start_run, which under --overwrite deletes the previous run
    run_id = start_run(config, accelerator)
    fingerprint = data.documents_fingerprint([*documents[0], *documents[1]])
    checkpoints = checkpoint_dirs(output, run_id) if config.resume else []
    if checkpoints:  # before loading the model and tokenising the data
        check_resumed_documents(checkpoints[-1], fingerprint)
    set_seed(config.seed)  # LoRA initialisation, anything random in the model

    model, tokenizer = build_model(config)
    params = configure_trainable(model, config)
    logger.info("trainable parameters: %d (%s)", sum(p.numel() for p in params), trainable_description(config))
    sampler, validation, data_summary = prepare_data(config, documents, tokenizer, accelerator)
    data_summary["fingerprint"] = fingerprint
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # The scheduler is stepped by hand once per optimiser step (accelerate's wrapper would step it once per
    # process), so the schedule is the same for any number of processes.
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup, config.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    log_path = output / LOG_FILE
    state = {"step": 0, "elapsed_s": 0.0}
    unlogged = None
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler, sampler, config, accelerator)
        kept = truncate_log(log_path, state["step"]) if accelerator.is_main_process else []
        logger.info("resumed from %s (step %d)", checkpoints[-1], state["step"])
        # A step's checkpoint is written before its validation and its log record: a crash in between (validation
        # out of memory, a kill) left the step without its record, kept in the checkpoint for this. Only the main
        # process reads the log; every rank takes part in the validation.
        missing = accelerator.is_main_process and all(r["step"] != state["step"] for r in kept)
        unlogged = state.get("record") if _on_any_rank(missing, accelerator) else None
    elif accelerator.is_main_process:
        if config.resume:
            logger.info("--resume: no checkpoint in %s, starting from step 0", output / CHECKPOINTS)
        log_path.unlink(missing_ok=True)

    samples_per_step = config.batch_size * config.grad_accum * accelerator.num_processes
    start_time, elapsed_before = time.time(), state["elapsed_s"]
    last_step = min(config.steps, config.stop_after or config.steps)

    def elapsed() -> float:
        return round(elapsed_before + time.time() - start_time, 2)

    def checkpoint(record: dict) -> None:
        trainer_state = {"step": record["step"], "elapsed_s": record["elapsed_s"], "config": _knobs(config),
                         "run_id": run_id, "data": data_summary["fingerprint"], "record": dict(record)}
        save_checkpoint(output, record["step"], model, optimizer, scheduler, sampler, trainer_state, accelerator)

    if unlogged is not None:  # finish the checkpoint's step as the interrupted run would have
        unlogged.update(run_validation(unlogged["step"], model, validation, config, accelerator, tokenizer),
                        elapsed_s=elapsed())
        log_step(log_path, unlogged, config, accelerator)
    with StopOnInterrupt() as interrupt:
        for step in range(state["step"] + 1, last_step + 1):
            record = run_step(step, model, optimizer, scheduler, sampler, params, config, accelerator, tokenizer)
            record.update(tokens=step * samples_per_step * config.sample_len, elapsed_s=elapsed())
            # Every rank must agree to stop at the same step, or the checkpoint's collectives would hang.
            stop = _on_any_rank(interrupt.requested, accelerator)
            saved = step % config.save_every == 0 or step == last_step or stop
            if saved:  # before the validation: a crash there (out of memory, a bug) loses no training
                checkpoint(record)
            validated = run_validation(step, model, validation, config, accelerator, tokenizer)
            record.update(validated, elapsed_s=elapsed())
            if validated and not stop and _on_any_rank(interrupt.requested, accelerator):  # a signal during validation
                stop = True  # stops here, as "finishing this step" promised, not after the next one
                if not saved:
                    checkpoint(record)
            log_step(log_path, record, config, accelerator)
            if stop:
                logger.warning("stopped at step %d with a checkpoint in %s: rerun the same command with --resume to "
                               "continue exactly", step, output / CHECKPOINTS)
                raise KeyboardInterrupt(f"training stopped at step {step} (checkpoint saved)")

    if accelerator.is_main_process:
        finish(output, accelerator.unwrap_model(model), config, data_summary, accelerator, last_step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output


def _on_any_rank(flag: bool, accelerator) -> bool:
    """Whether `flag` is set on any process: a decision one rank makes that every rank must follow (a call on
    every rank, in the same order)."""
    return accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum").item() > 0


def run_step(step: int, model, optimizer, scheduler, sampler, params, config: TrainConfig, accelerator,
             tokenizer) -> dict:
    """One optimiser step; returns the training part of its log record."""
    loss, kl = accelerator.reduce(train_step(model, sampler, config, accelerator, tokenizer), reduction="mean").tolist()
    if config.max_grad_norm:
        accelerator.clip_grad_norm_(params, config.max_grad_norm)
    lr = scheduler.get_last_lr()[0]  # the rate this step's update uses (after scheduler.step: the next one's)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    record = {"step": step, "loss": loss, "lr": lr}
    if config.distill_weight:
        record["distill_kl"] = kl
    return record


def run_validation(step: int, model, validation, config: TrainConfig, accelerator, tokenizer) -> dict:
    """The validation due at `step`, as log record fields ({} where none is due)."""
    if validation is None or not (step % config.eval_every == 0 or step == config.steps):
        return {}
    val_loss = evaluate(model, validation, config, accelerator)
    result = {"val_loss": val_loss, "val_ppl": math.exp(val_loss)}
    if config.retrieval_fraction or config.eval_retrieval:
        result["val_retrieval_acc"] = evaluate_retrieval(model, validation, config, tokenizer, accelerator)
    return result


def log_step(log_path: Path, record: dict, config: TrainConfig, accelerator) -> None:
    """Append the step's record to the log (main process), and a console line every --log-every steps."""
    if not accelerator.is_main_process:
        return
    append_log(log_path, record)
    if record["step"] % config.log_every == 0 or "val_loss" in record or record["step"] == config.steps:
        logger.info("step %d/%d  loss %.4f  lr %.2e%s%s", record["step"], config.steps, record["loss"], record["lr"],
                    f"  val ppl {record['val_ppl']:.3f}" if "val_ppl" in record else "",
                    f"  val retrieval {record['val_retrieval_acc']:.0%}" if "val_retrieval_acc" in record else "")


def finish(output: Path, model, config: TrainConfig, data_summary: dict, accelerator, steps_done: int) -> None:
    model.save_pretrained(output)  # with the upper LoRA in upper_lora/ when the run trained one
    log_path = output / LOG_FILE
    plot_curves(log_path, output / "loss_curve.png")
    records = read_log(log_path)
    evaluations = [r for r in records if "val_loss" in r]
    val_loss = evaluations[-1]["val_loss"] if evaluations else None
    samples = steps_done * config.batch_size * config.grad_accum * accelerator.num_processes
    summary = {
        "knobs": _knobs(config),
        "data": data_summary,
        "steps": steps_done,
        **({"stopped_early": f"--stop-after {steps_done} of a {config.steps}-step schedule (learning rate "
                             f"{records[-1]['lr']:.2e} there); --resume without it continues"}
           if steps_done < config.steps else {}),
        "samples_seen": samples,
        "tokens_seen": samples * config.sample_len,
        "decoder_tokens_trained": samples * (config.decoder_window - 1),
        "wall_time_s": records[-1]["elapsed_s"] if records else None,
        **provenance.record(accelerator.device, command=config.command or f"sharedllm.training.train({config!r})",
                            processes=accelerator.num_processes, distributed=accelerator.distributed_type.value,
                            mixed_precision=accelerator.mixed_precision),
        "final_train_loss": records[-1]["loss"] if records else None,
        "final_validation_loss": val_loss,
        "final_validation_ppl": None if val_loss is None else math.exp(val_loss),
        "query_position": "last token of the decoder window (paper's training choice), train and validation",
        "trainable": trainable_description(config),
    }
    provenance.write_json(output / "training_summary.json", summary, indent=2)
    logger.info("saved the adapter and training_summary.json in %s", output)
