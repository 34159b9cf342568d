"""`sharedllm train` on the command line: what a run is given (`TrainConfig`), the flags that give it and `run`.

Kept apart from the trainer (`sharedllm.training`, which imports torch, transformers and the model) so that
`sharedllm train --help` and argument errors answer at once: this module imports neither, and `run` imports the
trainer once the arguments are parsed. `TrainConfig`, `add_arguments` and `run` stay importable from
`sharedllm.training`, the Python API (`training.train(TrainConfig(...))`).
"""

import argparse
import logging
import sys
from dataclasses import dataclass, field

from sharedllm import data, provenance
from sharedllm.cli import InputError
from sharedllm.flags import add_base_argument, add_knob_arguments, add_threads_argument, knobs_from_args, parse_length
from sharedllm.knobs import KNOB_DEFAULTS, check_knob_names


@dataclass
class TrainConfig:
    output: str
    base: str | None = None  # None: assets.default_model_path()
    # data: the offline corpora (assets) by default, or user files / a datasets.Dataset
    domains: list[str] | None = None
    domain_weights: dict[str, float] | None = None
    data: object = None
    validation_data: object = None
    max_train_docs: int | None = None
    stride: int | None = None  # None: half a sample (CEPE)
    pack_documents: bool = False
    token_cache: str | None = None
    # samples: n context chunks of C tokens + a decoder window of Ld tokens
    n_chunks: int = 4
    # the SharedLLM knobs (config.KNOBS) given; the others keep the table's defaults (filled in at construction)
    knobs: dict = field(default_factory=dict)
    # optimisation
    steps: int = 200
    batch_size: int = 1
    grad_accum: int = 8
    lr: float = 1e-4
    warmup: int | None = None  # None: 10 steps, or --steps when the run is shorter
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_rank: int = 0
    gradient_checkpointing: bool = False
    retrieval_fraction: float = 0.0  # share of samples with key-value facts planted in context (data.py)
    retrieval_facts: int = 4  # most facts planted per exercise (1 to this many, each a different key)
    retrieval_window_facts: int = 0  # most never-asked facts also planted in an exercise's decoder window
    retrieval_wordings: int = 1  # exercises draw their wording from the first this many of data.RETRIEVAL_WORDINGS
    copy_fraction: float = 0.0  # share of samples whose decoder window repeats a context span (data.copy_sample)
    distill_weight: float = 0.0  # weight of the KL to the full-attention base on the decoder window (distillation.py)
    distill_top_k: int = 50
    eval_retrieval: bool = False  # log val_retrieval_acc even without retrieval exercises (a baseline's curve)
    init_adapter: str | None = None  # start from this adapter's weights instead of the zero-initialised ones
    stop_after: int | None = None  # end the run after this step (checkpoint + adapter), schedule unchanged
    seed: int = 0
    # bookkeeping
    eval_every: int = 50
    eval_windows: int = 8
    save_every: int = 50
    log_every: int = 10
    resume: bool = False
    overwrite: bool = False  # start a new run in a folder that is not empty (removes a previous run's RUN_OUTPUTS)
    progress: bool = True
    command: str | None = None

    def __post_init__(self):
        check_knob_names(self.knobs, "TrainConfig(knobs=...)")
        self.knobs = {**KNOB_DEFAULTS, **self.knobs}
        if self.warmup is None:
            self.warmup = min(10, self.steps)

    @property
    def chunk_size(self) -> int:
        return self.knobs["chunk_size"]

    @property
    def decoder_window(self) -> int:
        return self.knobs["decoder_window"]

    @property
    def context_len(self) -> int:
        return self.n_chunks * self.chunk_size

    @property
    def sample_len(self) -> int:
        return self.context_len + self.decoder_window


def parse_domains(entries: list[str] | None) -> tuple[list[str] | None, dict[str, float] | None]:
    """`["books", "code:2"]` -> (["books", "code"], {"books": 1.0, "code": 2.0}); weights only if any given."""
    if not entries:
        return None, None
    names, weights = [], {}
    for entry in entries:
        name, _, weight = entry.partition(":")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise InputError(f"--domains {entry}: the weight after ':' must be a number, e.g. {name}:2") from None
        if not weights[name] > 0:  # also refuses nan
            raise InputError(f"--domains {entry}: a domain's weight must be more than 0")
        names.append(name)
    return names, (weights if any(":" in e for e in entries) else None)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows real defaults only (a None / False default is described in the help text itself)."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(output="")
    parser.formatter_class = _HelpFormatter
    parser.epilog = ("Trains only the cross-attention of the M injected layers by default: the base model (and so "
                     "the lower model, its bottom M layers) stays frozen. Multi-GPU / multi-node: "
                     "accelerate launch --config_file sharedllm/configs/accelerate_ddp.yaml -m sharedllm train ...")
    add = parser.add_argument
    add_base_argument(parser)
    add_threads_argument(parser)
    add("--output", required=True, help="output folder (adapter, checkpoints, logs, summary): new or empty, or "
        "the run's own folder with --resume")
    add("--domains", nargs="+", default=None, metavar="NAME[:WEIGHT]",
        help="asset corpora to train on, each with an optional mixing weight (default: all, weighted by size)")
    add("--data", default=None, help="your own data instead of the assets: a .txt / .jsonl file or a folder of them")
    add("--validation-data", default=None,
        help="validation documents for --data (default: ~5%% of --data by id hash; of one document, its last 5%% of text)")
    add("--max-train-docs", type=int, default=None, help="use at most this many training documents (round-robin over domains)")
    add("--stride", type=parse_length, default=None, help="tokens between sample starts (default: half a sample, as CEPE)")
    add("--pack-documents", action="store_true",
        help="concatenate documents (EOS between them) so short ones are used; by default samples never cross documents")
    add("--token-cache", default=None, help="token-id cache folder (default: $SHAREDLLM_HOME/tokens, ~/.cache/sharedllm/tokens)")
    add("--n-chunks", type=int, default=defaults.n_chunks, help="context chunks per sample (n): a sample is n x "
        "--chunk-size context tokens + --decoder-window tokens")
    add("--steps", type=int, default=defaults.steps, help="optimiser steps")
    add("--batch-size", type=int, default=defaults.batch_size, help="samples per micro-batch per process")
    add("--grad-accum", type=int, default=defaults.grad_accum, help="micro-batches per optimiser step")
    add("--lr", type=float, default=defaults.lr,
        help="peak learning rate. The paper uses 1e-5 with 128 sequences per step over many thousand steps; "
             "a short run with a few sequences per step has far fewer updates and noisier gradients, and the "
             "zero-initialised o_proj must first grow, so 1e-4 learns visibly in a few hundred steps")
    add("--warmup", type=int, default=None,
        help="linear warmup steps before the cosine decay (default: 10, or --steps when fewer)")
    add("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay (paper: 0)")
    add("--max-grad-norm", type=float, default=defaults.max_grad_norm, help="gradient clipping norm (0 = off)")
    add("--lora-rank", type=int, default=defaults.lora_rank,
        help="LoRA rank (0 = off). Cross injection: on the upper-only layers M..N-1; the bottom M layers are never "
             "adapted (they are also the lower model, so the context encoder stays the frozen base). Joint "
             "injection (no adapter module): on every layer, and required, since the LoRA is all that trains")
    add("--gradient-checkpointing", action="store_true", help="recompute base-layer activations in the backward (less memory)")
    add("--retrieval-fraction", type=float, default=defaults.retrieval_fraction,
        help="share of samples turned into retrieval exercises: key-value facts planted in the context, questions "
             "at the end of the decoder window, only the answers scored (teaches reading back exact tokens). The "
             "loss averages over a micro-batch's scored tokens: with --batch-size 1 an exercise weighs like any "
             "sample, in larger micro-batches its few answer tokens are outweighed by the other rows' text")
    add("--retrieval-facts", type=int, default=defaults.retrieval_facts,
        help="most facts planted per retrieval exercise (1 to this many, each under a different key, one per equal "
             "slice of the context): more facts are more distractors the answer must be told apart from. "
             "val_retrieval_acc always plants up to 4, so runs compare")
    add("--retrieval-window-facts", type=int, default=defaults.retrieval_window_facts,
        help="most facts (0 to this many, under other keys, never asked) also planted in a retrieval exercise's "
             "decoder window before its questions: distractors in plain view, so the answer must be told apart by "
             "its key, not by being the one fact in the context")
    add("--retrieval-wordings", type=int, default=defaults.retrieval_wordings,
        help=f"exercises draw their wording from the first N of the {len(data.RETRIEVAL_WORDINGS)} training-only ones "
             "(data.RETRIEVAL_WORDINGS): 1 = the original \"Note: the code of Rosa's safe is ...\" only; 2 and 3 "
             "key facts by word pairs (\"amber-comet\", shaped like RULER's multikey keys, other words), 4 adds a "
             "second wording of people's things. val_retrieval_acc always uses the first, so runs compare")
    add("--copy-fraction", type=float, default=defaults.copy_fraction,
        help="share of samples turned into copy exercises (CEPE's duplicate warm-up): the decoder window repeats a "
             "span of the context, so every window token can be predicted by finding and copying it")
    add("--distill-weight", type=float, default=defaults.distill_weight,
        help="weight of a KL term to the base model with full attention over the whole sample (it must fit the "
             "base's native window), on the teacher's top-k tokens at every decoder position; CEPE's distilled "
             "variant uses 2 (with the LM loss at 1)")
    add("--distill-top-k", type=int, default=defaults.distill_top_k, help="teacher tokens the KL term keeps per position")
    add("--eval-retrieval", action="store_true",
        help="also log val_retrieval_acc (planted facts, exact answers) without training on exercises")
    add("--init-adapter", default=None, help="start from this adapter's weights, its cross-attention and its LoRA "
        "(e.g. continue training the shipped adapter on your data; a LoRA needs the same --lora-rank); the knobs of "
        "this run apply")
    add("--seed", type=int, default=defaults.seed, help="seed of the sampler and of any random initialisation")
    add("--eval-every", type=int, default=defaults.eval_every, help="steps between validation evaluations")
    add("--eval-windows", type=int, default=defaults.eval_windows, help="fixed validation windows per evaluation")
    add("--save-every", type=int, default=defaults.save_every, help="steps between checkpoints")
    add("--log-every", type=int, default=defaults.log_every, help="steps between console log lines (the JSONL gets every step)")
    add("--stop-after", type=int, default=None, help="end the run after this step with a checkpoint and the adapter "
        "saved; the learning-rate schedule stays that of --steps, and --resume continues it later")
    add("--resume", action="store_true", help="continue the run in --output from its newest checkpoint (exactly: same "
        "result as no interruption; a first Ctrl-C during training saves a checkpoint at the current step); refuses "
        "changed knobs or documents")
    add("--overwrite", action="store_true", help="start a new run in an --output that is not empty: deletes a previous "
        "run's checkpoints, log and adapter there (without it, train refuses such a folder)")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar while tokenising")
    add_knob_arguments(parser, "SharedLLM knobs of the trained model (docs/method.md; saved with the adapter)",
                       notes={"decoder_window": "also the decoder-window tokens of a sample"})


def run(args: argparse.Namespace) -> int:
    domains, weights = parse_domains(args.domains)
    options = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**{**options, "knobs": knobs_from_args(args), "domains": domains, "domain_weights": weights,
                            "command": provenance.command_line()})
    # the trainer (torch, transformers, the model) once the arguments are read: a bad --domains or knob name answers
    # at once; it is imported before logging is set up, as when it was the command's module
    from sharedllm.training import train

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    train(config)
    return 0
