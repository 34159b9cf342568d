"""`import sharedllm`, `sharedllm --help`, every command's parser (its --help and argument errors), `report` and
`compare` stay light (no torch, no transformers), and the Auto classes still load a saved adapter in either import
order."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_model
from fakes import char_tokenizer

from sharedllm.cli import COMMANDS
from sharedllm.modeling import SharedLLMForCausalLM

REPO = str(Path(__file__).resolve().parents[1])


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


def test_import_and_help_load_no_torch():
    result = run_python("""
        import sys
        import sharedllm
        assert "torch" not in sys.modules and "transformers" not in sys.modules, "import sharedllm loaded them"
        from sharedllm.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        assert "torch" not in sys.modules, "sharedllm --help imported torch"
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train" in result.stdout and "eval" in result.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_parser_loads_no_torch(command):
    """`sharedllm CMD --help` and CMD's argument errors answer before torch or transformers load (seconds on a small
    CPU): the command modules, and what they import to build their parser, import them where a model runs."""
    result = run_python(f"""
        import sys
        from sharedllm.cli import build_parser
        build_parser({command!r})
        print("torch" in sys.modules, "transformers" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False"], f"building the {command} parser imported torch / transformers"


@pytest.mark.parametrize("argv", [["eval", "heldout", "--methods", "window"], ["bench", "--lengths", "1K"],
                                  ["ask", "f.txt", "-q", "Who?"]], ids=lambda a: a[0])
def test_parsing_a_command_line_loads_no_torch(argv):
    """Parsing a whole command line, defaults included (`--device auto`), imports no torch: a missing or refused
    argument answers at once. "auto" becomes a device where the command starts its work (flags.resolve_device)."""
    result = run_python(f"""
        import sys
        from sharedllm.cli import build_parser
        args = build_parser({argv[0]!r}).parse_args({argv!r})
        print(args.device, "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["auto", "False"], "parsing the command line imported torch"


@pytest.mark.parametrize("argv, error", [
    (["--methods", "bogus"], "unknown method 'bogus'"),
    (["--methods", "window", "--chunk-spacing", "3"], "--chunk-spacing is a knob of sharedllm, not of window"),
    (["--methods", "infllm", "--infllm", "n_rep=0"], "infllm needs 1 <= n_rep <= block_size"),
], ids=["method", "knob", "infllm"])
def test_eval_refuses_a_method_mistake_without_torch(argv, error):
    """A wrong method name, a knob no chosen method reads and an InfLLM option it cannot run with are refused from
    `method_table` before anything imports torch (they took 5-12 s on the 2-core CPU, most of it importing it)."""
    result = run_python(f"""
        import sys
        from sharedllm.cli import main
        try:
            main(["eval", "heldout", "--lengths", "8K", *{argv!r}])
        except SystemExit as stop:
            print("exit", stop.code, "torch" in sys.modules)
    """)
    assert error in result.stderr, result.stderr[-2000:]
    assert result.stdout.split() == ["exit", "2", "False"], "the refusal imported torch"


@pytest.mark.parametrize("argv, error", [
    (["eval", "passkey", "--lengths", "8K", "--methods", "sharedllm", "--adapter", "none", "--tree-selection",
      "attention", "--node-encoding", "node"], "tree_selection='attention' scores tokens of the whole-chunk pass"),
    (["eval", "passkey", "--lengths", "8K", "--methods", "sharedllm", "--tree-selection", "recent"],
     "does not score the context by attention"),  # the default adapter's saved knobs, read from its config.json
    (["bench", "--lengths", "1K", "--tree-selection", "recent"], "does not score the context by attention"),
], ids=["eval", "eval-adapter", "bench"])
def test_a_bad_knob_combination_is_refused_without_torch(argv, error, tmp_path):
    """eval and bench judge the knobs (with an adapter's saved ones) by `knob_rules`, before torch or transformers
    load: the refusal took 4-10 s on the 2-core CPU, nearly all of it importing them."""
    result = run_python(f"""
        import os, sys
        os.environ["SHAREDLLM_HOME"] = {str(tmp_path)!r}  # a new machine: nothing fetched
        from sharedllm.cli import main
        try:
            main({argv!r})
        except SystemExit as stop:
            print("exit", stop.code, "torch" in sys.modules, "transformers" in sys.modules)
    """)
    assert error in result.stderr, result.stderr[-2000:]
    assert result.stdout.split() == ["exit", "2", "False", "False"], "the refusal imported torch / transformers"


def test_report_and_compare_run_without_torch(tmp_path):
    """`report` and `compare` read result JSON only: they run without importing a model library."""
    results = tmp_path / "results"
    results.mkdir()
    cells = [{"length": 4096, "depth": depth, "correct": 1, "trials": 1, "accuracy": 1.0} for depth in (0.0, 1.0)]
    passkey = {"task": "passkey", "protocol": "landmark", "method": "full", "model": "m",
               "data": {"source": "synthetic"}, "scores": {"4096": 1.0}, "counts": {"4096": {"trials": 2}},
               "details": {"cells": cells}, "created": "2026-01-01"}  # its heatmap is plotted
    (results / "passkey_full.json").write_text(json.dumps(passkey))
    cell_files = []
    for method, nlls in (("a", [2.0, 3.0]), ("b", [2.5, 3.5])):  # two held-out cells on the same windows
        windows = [{"doc": "d", "start": 256 * i, "mean_nll": nll, "scored_tokens": 256} for i, nll in enumerate(nlls)]
        cell = {"task": "heldout", "method": method, "adapter": None, "domain": "books", "length": 4096, "plan": {},
                "windows": windows}
        cell_files.append(str(tmp_path / f"{method}.json"))
        (tmp_path / f"{method}.json").write_text(json.dumps(cell))
    report = ["report", "--results", str(results), "--docs", str(tmp_path / "docs")]
    result = run_python(f"""
        import sys
        from sharedllm.cli import main
        for argv in ({report!r}, {["compare", *cell_files]!r}):
            try:
                main(argv)
            except SystemExit as stop:
                assert stop.code == 0, argv
        print("torch" in sys.modules, "transformers" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "docs" / "results.md").is_file() and "windows scored by both" in result.stdout
    assert result.stdout.split()[-2:] == ["False", "False"], "report or compare imported torch / transformers"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    base = tiny_model("llama")
    base.save_pretrained(root / "base")
    char_tokenizer().save_pretrained(root / "base")  # from_pretrained loads the base's tokenizer too
    model = SharedLLMForCausalLM.from_base(base, chunk_size=16, decoder_window=32, n_injected_layers=2, tree_depth=1,
                                           tokens_per_node=4)
    model.config.base_model = str(root / "base")
    model.save_pretrained(root / "adapter")
    return root / "adapter"


@pytest.mark.slow  # fresh interpreters importing torch
@pytest.mark.parametrize("first", ["import sharedllm", "from transformers import AutoModelForCausalLM"])
def test_auto_classes_load_an_adapter_after_import_sharedllm(adapter, first):
    """Before this change `import sharedllm` registered eagerly (importing torch); now registration waits for
    transformers' auto modules, whichever of the two is imported first."""
    result = run_python(f"""
        {first}
        import sharedllm
        from transformers import AutoConfig, AutoModelForCausalLM
        config = AutoConfig.from_pretrained({str(adapter)!r})
        assert type(config).__name__ == "SharedLLMConfig", type(config)
        model = AutoModelForCausalLM.from_pretrained({str(adapter)!r})
        from sharedllm.modeling import SharedLLMForCausalLM
        assert isinstance(model, SharedLLMForCausalLM), type(model)
        assert AutoModelForCausalLM._model_mapping[type(config)] is SharedLLMForCausalLM  # the real class now
        print("ok")
    """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
