# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Each installs what it needs on a fresh machine.
PY ?= python3
# The CPU build of torch that this platform serves; on a GPU machine install your own torch first
# and run `make ... TORCH_SPEC=` to keep it (an unpinned `pip install torch` pulls several GB of CUDA wheels).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test demo

install:
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"

# The suite runs as on a fresh machine: HOME and SHAREDLLM_HOME are new empty folders, so no test can lean on
# this machine's caches (~/.cache/sharedllm, pip's, matplotlib's); the integration tests fetch the default model
# through `sharedllm.assets` as a user would. PYTHONUSERBASE keeps packages installed with `pip --user` visible.
test: install
	fresh=$$(mktemp -d) && mkdir -p "$$fresh/home" "$$fresh/sharedllm" && \
	PYTHONUSERBASE="$$($(PY) -m site --user-base)" HOME="$$fresh/home" SHAREDLLM_HOME="$$fresh/sharedllm" \
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs; status=$$?; rm -rf "$$fresh"; exit $$status

demo: install
	$(PY) -m sharedllm assets
	HF_HUB_OFFLINE=1 $(PY) -m sharedllm eval demo
