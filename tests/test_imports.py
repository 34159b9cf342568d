"""`import sharedllm` and `sharedllm --help` stay light (no torch), and the Auto classes still load a saved adapter
in either import order."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_model
from fakes import char_tokenizer

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
