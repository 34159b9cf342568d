"""SharedLLM: context window extension by multi-scale self-injection, on transformers 5.

`import sharedllm` is light: torch and transformers (about 10 s to import on a small CPU) load when a model class is
first used, so `sharedllm --help` and argument errors answer at once.

`AutoConfig` / `AutoModelForCausalLM.from_pretrained(adapter_dir)` still work after `import sharedllm`, in either
import order: transformers' auto modules are not imported here, but the moment they are (by the user, or already),
`SharedLLMConfig` is registered for model_type "sharedllm", with a stand-in for the model class whose
`from_pretrained` imports `sharedllm.modeling` and hands over; importing `sharedllm.modeling` registers the real
class in its place (`register_auto_classes`).
"""

import importlib
import importlib.machinery
import logging
import sys

from sharedllm.lazy import lazy_exports

__all__ = ["SharedLLMConfig", "SharedLLMForCausalLM", "SharedLLMCache", "base_fingerprint", "load_causal_lm"]
__version__ = "0.1.0"

# public name -> module defining it, imported on first access
_EXPORTS = {"SharedLLMConfig": "sharedllm.config", "SharedLLMForCausalLM": "sharedllm.modeling",
            "SharedLLMCache": "sharedllm.modeling", "base_fingerprint": "sharedllm.loading",
            "load_causal_lm": "sharedllm.loading", "register_auto_classes": "sharedllm.modeling"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


# --------------------------------------------------------------------------------------------------
# Registration with transformers' Auto classes, when they are imported


class _SharedLLMForCausalLMStandIn:
    """Registered for SharedLLMConfig while `sharedllm.modeling` is not imported: AutoModelForCausalLM calls
    `from_pretrained` / `_from_config` on it, which import the real class and call it with the same arguments."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return _model_class().from_pretrained(*args, **kwargs)

    @classmethod
    def _from_config(cls, *args, **kwargs):
        return _model_class()._from_config(*args, **kwargs)


def _model_class():
    return importlib.import_module("sharedllm.modeling").SharedLLMForCausalLM  # its import registers it


def _register_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig

    config_module = sys.modules.get("sharedllm.config")
    if config_module is not None and not hasattr(config_module, "SharedLLMConfig"):
        return  # sharedllm.config is importing transformers right now: it registers itself once defined
    from sharedllm.config import SharedLLMConfig

    AutoConfig.register("sharedllm", SharedLLMConfig, exist_ok=True)


def _register_stand_in() -> None:
    from transformers.models.auto.modeling_auto import AutoModelForCausalLM

    from sharedllm.config import SharedLLMConfig

    _register_config()
    if "sharedllm.modeling" not in sys.modules:  # never replace the real class
        AutoModelForCausalLM.register(SharedLLMConfig, _SharedLLMForCausalLMStandIn, exist_ok=True)


def _register_model() -> None:
    sys.modules["sharedllm.modeling"].register_auto_classes()


# module -> what to register once it has run (in this order when several are already imported)
_AFTER_IMPORT = {"transformers.models.auto.configuration_auto": _register_config,
                 "transformers.models.auto.modeling_auto": _register_stand_in,
                 "sharedllm.modeling": _register_model}


def _run(register) -> None:
    try:
        register()
    except Exception as err:  # never break the user's own import of transformers
        logging.getLogger(__name__).warning("could not register SharedLLM with transformers' Auto classes (%s); "
                                            "`import sharedllm.modeling` registers them", err)


class _AfterImportHook:
    """A meta-path finder that finds nothing itself: for the modules of `_AFTER_IMPORT` it takes the regular spec
    and runs the registration right after the module's code has run (once)."""

    def find_spec(self, name, path, target=None):
        register = _AFTER_IMPORT.get(name)
        if register is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _run(register)

        spec.loader.exec_module = exec_module  # this module's own loader object: nothing else is affected
        return spec


for _name, _register in _AFTER_IMPORT.items():
    if _name in sys.modules:
        _run(_register)
if not any(isinstance(finder, _AfterImportHook) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterImportHook())
