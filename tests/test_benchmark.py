"""`sharedllm bench` on a tiny random model: the grid runs and writes complete JSON, ratios and targets follow from
the timings, skipped cells are recorded with their reason, the FLOP formula and the matmul peak are sane."""

import argparse
import json

import pytest
import torch

from conftest import tiny_model
from sharedllm import benchmark
from sharedllm.benchmark import (
    BENCH_METHODS,
    BenchSettings,
    check_targets,
    compute_ratios,
    measure_matmul_peak,
    prefill_flops,
    run_benchmark,
)
from sharedllm.benchmark.flops import _infllm_attention_keys
from sharedllm.config import KNOBS
from sharedllm.flags import knob_flag

# chunks of 16, a decoder window of 32: lengths 96 / 160 give 4 / 8 context chunks
TINY_KNOBS = dict(chunk_size=16, decoder_window=32, n_injected_layers=2, tree_depth=1, tokens_per_node=4)
TINY_INFLLM = dict(n_sink=4, block_size=8, n_rep=2, topk=2, chunk_size=8)
CELL_FIELDS = {
    "method", "length", "status", "reason", "repeats", "prefill_s", "prefill_s_all", "decode_s", "decode_s_mean",
    "decode_s_max", "decode_s_amortized", "decode_steps", "peak_memory_bytes", "prefill_peak_memory_bytes",
    "peak_memory_bytes_all", "memory_baseline_bytes", "memory_method", "prefill_flops",
    "achieved_flops_per_s", "matmul_peak_flops_per_s", "flops_utilisation", "ratios",
}
META_FIELDS = {"hardware", "command", "git_commit", "created", "base_model", "settings", "matmul_peak_flops_per_s"}
HARDWARE_FIELDS = {"device", "cpu", "gpu", "threads", "dtype", "attention", "torch", "transformers", "python"}


def tiny_settings(**overrides) -> BenchSettings:
    # threads=1: the tests share a busy machine, where an oversubscribed OpenMP pool is orders of magnitude slower
    settings = dict(lengths=(96, 160), repeats=1, decode_steps=2, isolate=False, knobs=dict(TINY_KNOBS),
                    streaming_block=8, matmul_size=128, threads=1, target_length=96, target_long_length=160,
                    infllm=TINY_INFLLM)
    return BenchSettings(**{**settings, **overrides})


def test_grid_writes_complete_json_and_plots(tmp_path):
    output = tmp_path / "bench-cpu.json"
    results = run_benchmark(tiny_model("llama"), tiny_settings(), output=output, progress=False)
    written = json.loads(output.read_text())
    assert written == json.loads(json.dumps(results))  # the file is the whole result
    assert META_FIELDS <= set(written["meta"]) and HARDWARE_FIELDS <= set(written["meta"]["hardware"])
    cells = {(c["method"], c["length"]): c for c in written["cells"]}
    assert set(cells) == {(m, n) for m in BENCH_METHODS for n in (96, 160)}
    for cell in cells.values():
        assert cell["status"] == "ok", cell
        assert CELL_FIELDS <= set(cell)
        assert cell["prefill_s"] > 0 and cell["decode_s"] > 0 and cell["decode_steps"] == 2
        assert cell["peak_memory_bytes"] >= 0 and cell["prefill_flops"] > 0
    assert cells[("full", 96)]["ratios"]["prefill_speedup_vs_full"] == pytest.approx(1.0)
    assert [t["name"] for t in written["targets"]][:2] == ["prefill_scaling", "memory_scaling"]
    assert all(t["met"] in (True, False) for t in written["targets"])  # every target measurable on this grid
    table = benchmark.format_table(written)
    assert "targets:" in table and "sharedllm" in table
    assert not (tmp_path / "bench-cpu.partial.json").exists()  # moved onto the result when the grid was done
    paths = benchmark.plot_results(written, tmp_path / "figures")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_skipped_cells_are_recorded_with_reason(tmp_path):
    # any prefill takes longer than 0 s, so every method stops after its first length; window is capped at 64
    settings = tiny_settings(methods=("full", "window"), lengths=(64, 96, 128), max_seconds=0.0,
                             max_length={"window": 32})
    results = run_benchmark(tiny_model("llama"), settings, progress=False)
    by_cell = {(c["method"], c["length"]): c for c in results["cells"]}
    assert by_cell[("full", 64)]["status"] == "ok"
    assert by_cell[("full", 96)]["status"] == "skipped" and "--max-seconds" in by_cell[("full", 96)]["reason"]
    assert by_cell[("full", 128)]["status"] == "skipped"
    assert all(by_cell[("window", n)]["status"] == "skipped" for n in (64, 96, 128))
    assert "--max-length window=32" in by_cell[("window", 64)]["reason"]
    assert "skipped: prefill at 64 took" in benchmark.format_table(results)


def bench(monkeypatch, capsys, tmp_path, *argv, **settings) -> tuple[int, str]:
    """`sharedllm bench` through its entry point into tmp_path, its grid the tiny one (tiny_settings(**settings)) on
    the tiny model: (exit code, stderr)."""
    from sharedllm.benchmark import grid
    from sharedllm.cli import main

    tiny_grid = lambda base, _, output, overwrite: run_benchmark(  # noqa: E731
        tiny_model("llama"), tiny_settings(**settings), output=output, progress=False, overwrite=overwrite)
    monkeypatch.setattr(grid, "run_benchmark", tiny_grid)
    with pytest.raises(SystemExit) as done:
        main(["bench", "--base", "fake", "--adapter", "none", "--device", "cpu", "--output", str(tmp_path),
              "--figures", str(tmp_path / "figures"), *argv])
    return done.value.code, capsys.readouterr().err


def test_bench_replaces_a_result_only_when_asked_and_only_with_a_finished_grid(monkeypatch, capsys, tmp_path):
    from sharedllm.benchmark import grid

    result, partial = tmp_path / "bench-cpu.json", tmp_path / "bench-cpu.partial.json"
    result.write_text("the committed run")
    code, err = bench(monkeypatch, capsys, tmp_path, methods=("window",))
    assert code == 2 and "bench-cpu.json exists: pass --overwrite to replace it" in err
    # interrupted at the second cell: the previous result stays whole, the first cell is in the partial file
    measure = grid._run_cell_in_process
    calls = []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(*args)

    monkeypatch.setattr(grid, "_run_cell_in_process", interrupted)
    code, err = bench(monkeypatch, capsys, tmp_path, "--overwrite", methods=("window",))
    assert code == 130 and f"the cells measured so far are in {partial}" in err
    assert result.read_text() == "the committed run" and not (tmp_path / "figures").exists()
    assert [c["length"] for c in json.loads(partial.read_text())["cells"]] == [96]
    monkeypatch.setattr(grid, "_run_cell_in_process", measure)
    result.unlink()
    code, err = bench(monkeypatch, capsys, tmp_path, methods=("window",))
    assert code == 2 and "bench-cpu.partial.json holds the cells of an interrupted run" in err
    code, err = bench(monkeypatch, capsys, tmp_path, "--overwrite", methods=("window",))
    assert code == 0 and len(json.loads(result.read_text())["cells"]) == 2 and not partial.exists()
    assert (tmp_path / "figures" / "bench_time.png").exists()


def test_run_benchmark_replaces_a_result_only_when_asked(tmp_path):
    """The Python API refuses as `sharedllm bench` does, before anything loads (the base here is no model at all)."""
    result, partial = tmp_path / "bench-cpu.json", tmp_path / "bench-cpu.partial.json"
    result.write_text("the committed run")
    settings = tiny_settings(methods=("window",))
    with pytest.raises(ValueError, match="bench-cpu.json exists: pass --overwrite to replace it"):
        run_benchmark(str(tmp_path / "no-model"), settings, output=result, progress=False)
    assert result.read_text() == "the committed run" and not partial.exists()
    result.unlink()
    partial.write_text("an interrupted run's cells")
    with pytest.raises(ValueError, match="bench-cpu.partial.json holds the cells of an interrupted run"):
        run_benchmark(str(tmp_path / "no-model"), settings, output=result, progress=False)
    result.write_text("the committed run")
    run_benchmark(tiny_model("llama"), settings, output=result, progress=False, overwrite=True)
    assert len(json.loads(result.read_text())["cells"]) == 2 and not partial.exists()


def test_bench_with_no_cell_measured_fails_and_replaces_nothing(monkeypatch, capsys, tmp_path):
    from sharedllm.benchmark import grid
    from sharedllm.benchmark.measure import skipped_cell

    monkeypatch.setattr(grid, "_run_cell_in_process", lambda base, method, length, settings: skipped_cell(
        method, length, "RuntimeError: out of memory", "failed"))
    code, err = bench(monkeypatch, capsys, tmp_path, methods=("window", "full"))
    assert code == 1 and "no cell ran (each failed or was skipped)" in err
    assert not (tmp_path / "bench-cpu.json").exists() and not (tmp_path / "figures").exists()
    cells = json.loads((tmp_path / "bench-cpu.partial.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["failed", "failed", "skipped", "skipped"]  # 160 not run after 96 failed


def fake_cell(method, length, prefill, decode, memory, utilisation=0.6, matmul_peak=100.0):
    return dict(method=method, length=length, status="ok", prefill_s=prefill, decode_s=decode,
                peak_memory_bytes=memory, flops_utilisation=utilisation, matmul_peak_flops_per_s=matmul_peak,
                achieved_flops_per_s=utilisation * matmul_peak, repeats=1)


def test_ratios_and_targets_from_given_timings():
    cells = [
        fake_cell("full", 1000, prefill=30.0, decode=0.05, memory=900, matmul_peak=50.0),  # a busier machine
        fake_cell("streaming", 1000, prefill=8.0, decode=0.04, memory=200),
        fake_cell("cepe", 1000, prefill=6.0, decode=0.06, memory=800),
        fake_cell("window", 1000, prefill=0.5, decode=0.02, memory=100),
        fake_cell("sharedllm", 1000, prefill=2.0, decode=0.025, memory=250),
        fake_cell("sharedllm", 4000, prefill=10.0, decode=0.025, memory=300),
        dict(method="full", length=4000, status="skipped", reason="too slow"),
    ]
    compute_ratios(cells)
    shared = cells[4]["ratios"]
    assert shared["prefill_speedup_vs_full"] == pytest.approx(15.0)
    assert shared["prefill_speedup_vs_streaming"] == pytest.approx(4.0)
    assert shared["decode_speedup_vs_full"] == pytest.approx(2.0)
    assert shared["memory_fraction_of_full"] == pytest.approx(250 / 900)
    assert shared["memory_fraction_of_streaming"] == pytest.approx(1.25)
    assert cells[5]["ratios"]["prefill_speedup_vs_full"] is None  # full was skipped at 4000
    assert "ratios" not in cells[6]

    targets = {t["name"]: t for t in check_targets(cells, at=1000, long=4000)}
    assert targets["prefill_scaling"]["value"] == pytest.approx(5.0)
    assert targets["prefill_scaling"]["met"] is False
    assert targets["prefill_scaling"]["miss_factor"] == pytest.approx(5.0 / 4.5)
    assert targets["memory_scaling"]["met"] is True  # 300 / 250 = 1.2 <= 1.5
    assert targets["prefill_vs_full"]["met"] is True  # 15 >= 10
    # full ran at half the matmul speed: on an equally fast machine it would have taken 15 s, not 30 s
    assert targets["prefill_vs_full"]["value_peak_normalised"] == pytest.approx(7.5)
    assert targets["memory_vs_full"]["value_peak_normalised"] is None  # memory does not depend on speed
    assert targets["prefill_vs_streaming"]["met"] is True  # exactly 4
    assert targets["prefill_vs_cepe"]["met"] is False
    assert targets["prefill_vs_cepe"]["miss_factor"] == pytest.approx(4 / 3)
    assert targets["memory_vs_full"]["met"] is True  # 250 / 900 <= 1/3
    assert targets["decode_vs_window"]["value"] == pytest.approx(1.25) and targets["decode_vs_window"]["met"] is True
    assert targets["flops_utilisation"]["met"] is True

    missing = {t["name"]: t for t in check_targets(cells, at=1000, long=8000)}
    assert missing["prefill_scaling"]["met"] is None and "not measured" in missing["prefill_scaling"]["note"]


def test_targets_say_a_run_without_decode_steps_has_no_decode_time():
    cells = [fake_cell("window", 1000, 0.5, None, 100), fake_cell("sharedllm", 1000, 2.0, None, 250)]
    decode = {t["name"]: t for t in check_targets(cells, at=1000)}["decode_vs_window"]
    assert decode["note"] == "not measured: needs --decode-steps > 0"
    decode = {t["name"]: t for t in check_targets(cells[1:], at=1000)}["decode_vs_window"]
    assert decode["note"] == "not measured: needs window and sharedllm at 1000"


def test_replot_takes_the_device_and_target_lengths_of_its_json(capsys, tmp_path):
    from sharedllm.cli import main

    cells = [fake_cell("full", 1000, 30.0, 0.05, 900), fake_cell("sharedllm", 1000, 2.0, 0.025, 250),
             fake_cell("sharedllm", 4000, 10.0, 0.025, 300)]
    hardware = dict(device="cuda", cpu="x86", gpu="H100", threads=1, dtype="bfloat16", attention="sdpa", torch="2",
                    transformers="5")
    meta = dict(hardware=hardware, base_model="m", matmul_peak_flops_per_s=1e9,
                settings=dict(target_length=1000, target_long_length=4000))  # a quick check's lengths
    path = tmp_path / "bench-cuda.json"
    path.write_text(json.dumps(dict(meta=meta, cells=cells, targets=[])))

    def replot(*argv) -> str:
        with pytest.raises(SystemExit) as done:
            main(["bench", "--replot", str(path), "--figures", str(tmp_path / "figures"), *argv])
        assert done.value.code == 0
        return capsys.readouterr().out

    assert "sharedllm prefill 4000 / 1000 <= 4.5: 5 (MISSED" in replot()  # not "not measured" at 32K / 128K
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["bench_memory-cuda.png", "bench_time-cuda.png"]
    assert "needs sharedllm at 1000 and 8000" in replot("--target-long-length", "8000")  # a length given still wins


def test_replot_names_each_grid_flag_as_typed(capsys, tmp_path):
    """Flags named otherwise than their destination (--model, --no-isolate) or added in a group (the knobs) are named as
    typed."""
    from sharedllm.cli import main

    path = tmp_path / "bench-cpu.json"
    path.write_text(json.dumps(dict(meta={}, cells=[], targets=[])))
    with pytest.raises(SystemExit) as done:
        main(["bench", "--replot", str(path), "--model", "m", "--no-isolate", "--chunk-size", "1K", "--no-full-logits",
              "--overwrite", "--target-length", "1K", "--figures", str(tmp_path / "figures")])
    assert done.value.code == 2
    assert "--model, --chunk-size, --full-logits, --no-isolate, --overwrite would be ignored" in capsys.readouterr().err
    assert not (tmp_path / "figures").exists()


def test_prefill_flops_formula():
    config = tiny_model("llama").config  # d=64, h=64, kv=32, f=128, 4 layers, vocab 128
    per_token_layer = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)
    full = prefill_flops("full", 100, config, TINY_KNOBS)
    assert full == 4 * (per_token_layer * 100 + 4 * 64 * 100 * 101 // 2) + 2 * 64 * 128
    # the window floor is full attention over the window; streaming costs at least the linear part of full
    assert prefill_flops("window", 100, config, TINY_KNOBS) == prefill_flops("full", 32, config, TINY_KNOBS)
    streaming = dict(window=32, n_sink=4, block_size=8)  # methods.StreamingLLM.describe()
    assert 4 * per_token_layer * 100 < prefill_flops("streaming", 100, config, TINY_KNOBS, streaming) < full
    # SharedLLM grows linearly: doubling the context doubles the lower model's cost, far below full's growth
    short, long = (prefill_flops("sharedllm", n, config, TINY_KNOBS) for n in (32 + 16 * 64, 32 + 16 * 128))
    assert long < 2 * short < prefill_flops("full", 32 + 16 * 64, config, TINY_KNOBS)
    assert prefill_flops("cepe", 32 + 16 * 64, config, TINY_KNOBS) > short  # every layer, no compression


def _attended_flops(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, out_val=None, **_):
    """FlopCounterMode's count for CPU SDPA (which torch leaves uncounted): QK^T and AV of the (query, key) pairs
    the mask or is_causal lets through, 2 (hd + hd_v) per pair and query head. The formula counts these useful
    FLOPs; torch's own SDPA formula counts the whole rectangle, masked pairs included."""
    batch, heads, n_queries, head_dim = query.shape
    n_keys = key.shape[-2]
    if attn_mask is not None:  # additive (dtype min = masked) or boolean, broadcast over batch and heads
        allowed = attn_mask if attn_mask.dtype == torch.bool else attn_mask > torch.finfo(attn_mask.dtype).min / 2
        pairs = int(allowed.expand(batch, heads, n_queries, n_keys).sum())
    elif is_causal:  # SDPA's causal mask: query i sees keys 0..i
        pairs = batch * heads * sum(min(i + 1, n_keys) for i in range(n_queries))
    else:
        pairs = batch * heads * n_queries * n_keys
    return 2 * pairs * (head_dim + value.shape[-1])


_attended_flops._get_raw = True  # FlopCounterMode hands it the tensors (the mask), not only their shapes

# the tiny model: M = 2 of 4 layers, C = 16, Ld = 32; lengths 24 / 96 / 101 give 0 / 4 / 5 chunks
FLOP_CASES = {
    "cross": {},
    "cross, attention selection, top 2 chunks": dict(tree_selection="attention", context_chunks=2),
    "joint, overlap 4, top 2 chunks, scoring layer 1": dict(
        injection="joint", chunk_overlap=4, tree_selection="attention", context_chunks=2, selection_layer=1,
        leaf_tokens_per_node=8),
    "joint, top 2 + 1 chunks, 1 + 1 exact leaves, 3 query tokens": dict(
        injection="joint", chunk_overlap=4, tree_selection="attention", context_chunks=2, selected_leaves=1,
        selection_score="probability", query_tokens=3, query_chunks=1),
    "joint, top 1 + 1 + 1 chunks, 3 query tokens also ranking at query layer 0": dict(
        injection="joint", chunk_overlap=4, tree_selection="attention", context_chunks=1, selected_leaves=1,
        selection_score="probability", query_tokens=3, query_chunks=1, query_layer=0),
    "joint, chunks alone, every chunk read": dict(injection="joint", chunk_overlap=0),
    "joint, M = 1, overlap C, D = 2, top 3 with 1 recent, scoring layer 0": dict(
        injection="joint", n_injected_layers=1, chunk_overlap=16, tree_depth=2, tokens_per_node=2,
        tree_selection="attention", context_chunks=3, recent_chunks=1, selection_layer=0),
}


@pytest.mark.parametrize("case", FLOP_CASES)
def test_sharedllm_flops_are_what_the_prefill_computes(case):
    """prefill_flops equals torch's FLOP count of the prefill the benchmark times (methods.SharedLLM.prefill), for
    both injections: the lower model with joint injection's overlap prefixes and sink, the query's layers, the
    chunk scoring, the k chunks read. Exactly: what the formula leaves out (norms, RoPE, softmax, SiLU, cosine
    scores) is elementwise, which FlopCounterMode does not count either, and both count lm_head on the last
    position only (logits_to_keep=1)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sharedllm.methods import load_method

    base = tiny_model("llama")
    knobs = {**TINY_KNOBS, **FLOP_CASES[case]}
    methods = {"sharedllm": load_method("sharedllm", base, shared=knobs)}
    if case.startswith("joint, overlap"):  # cepe takes only the lengths of a joint comparison's knobs
        methods["cepe"] = load_method("cepe", base, shared=knobs)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    for name, method in methods.items():
        for length in (24, 96, 101):
            with FlopCounterMode(display=False, custom_mapping={flash: _attended_flops}) as counter:
                method.prefill(torch.randint(3, 100, (length,)))
            assert prefill_flops(name, length, base.config, knobs) == counter.get_total_flops(), (name, length)


def test_matmul_peak_is_positive():
    assert measure_matmul_peak("cpu", torch.float32, size=128, repeats=3) > 0


def test_cli_arguments_parse_lengths_and_caps():
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    args = parser.parse_args(["--adapter", "none", "--lengths", "4K", "2048", "--max-length", "full=32k", "--chunk-size", "1K",
                              "--device", "cpu", "--tree-selection", "recent", "--infllm", "topk=8", "n_sink=16"])
    settings = benchmark.settings_from_args(args)
    assert settings.options("infllm") == {"topk": 8, "n_sink": 16}  # InfLLM's keywords, as eval hands them over
    assert settings.lengths == (4096, 2048)
    assert settings.max_length == {"full": 32768}
    assert settings.knobs["chunk_size"] == 1024 and settings.knobs["tree_selection"] == "recent"
    assert settings.knobs["decoder_window"] == KNOBS["decoder_window"].default
    with pytest.raises(SystemExit):
        parser.parse_args(["--lengths", "4 GB"])


def test_adapter_none_is_untrained_and_a_missing_adapter_fails_clearly(tmp_path):
    from sharedllm.cli import InputError

    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    settings = benchmark.settings_from_args(parser.parse_args(["--adapter", "none", "--n-injected-layers", "2"]))
    assert settings.adapter is None and settings.knobs["n_injected_layers"] == 2  # the repository default not read
    default = benchmark.settings_from_args(parser.parse_args([]))
    assert default.adapter.endswith("smollm2-135m-joint-more-exact") and default.knobs["injection"] == "joint"
    assert default.knobs["tree_depth"] == 0 and default.knobs["chunk_spacing"] == 512  # the exact reading
    assert settings.knobs["decoder_window"] == KNOBS["decoder_window"].default
    with pytest.raises(InputError, match=r"no adapter in .*nope \(no config.json\)"):
        benchmark.settings_from_args(parser.parse_args(["--adapter", str(tmp_path / "nope")]))


def test_knobs_resolve_given_then_adapter_then_defaults(tmp_path):
    from sharedllm.config import SharedLLMConfig

    SharedLLMConfig(chunk_size=128, decoder_window=256, tokens_per_node=8, leaf_tokens_per_node=16).save_pretrained(tmp_path)
    knobs = benchmark.resolve_knobs(str(tmp_path), {"decoder_window": 384, "leaf_tokens_per_node": None})
    assert knobs["decoder_window"] == 384  # given
    assert knobs["chunk_size"] == 128 and knobs["tokens_per_node"] == 8  # the adapter's
    assert knobs["leaf_tokens_per_node"] is None  # given as "none": the adapter's 16 switched off
    assert knobs["tree_depth"] == KNOBS["tree_depth"].default  # not given, not saved differently: the default
    with pytest.raises(ValueError, match="tokens_per_node"):
        benchmark.resolve_knobs(None, {"chunk_size": 16, "tree_depth": 3, "tokens_per_node": 32})


def test_bench_help_lists_every_knob_flag():
    from sharedllm.cli import build_parser

    parser = build_parser("bench")
    bench = parser._subparsers._group_actions[0].choices["bench"]
    help_text = bench.format_help()
    missing = [knob_flag(name) for name in KNOBS if knob_flag(name) not in help_text]
    assert not missing, missing


def test_model_is_a_deprecated_alias_of_base():
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    assert benchmark.cli.base_from_args(parser.parse_args(["--base", "/m"])) == "/m"
    with pytest.warns(FutureWarning, match="--base"):
        assert benchmark.cli.base_from_args(parser.parse_args(["--model", "/m"])) == "/m"
    with pytest.raises(benchmark.cli.InputError), pytest.warns(FutureWarning):
        benchmark.cli.base_from_args(parser.parse_args(["--model", "/m", "--base", "/other"]))


def test_output_is_a_folder_and_the_old_file_spelling_still_works(tmp_path):
    assert benchmark.cli.output_file(str(tmp_path), "cpu") == tmp_path / "bench-cpu.json"
    with pytest.warns(FutureWarning, match="folder"):
        assert benchmark.cli.output_file(str(tmp_path / "mine.json"), "cpu") == tmp_path / "mine.json"


def test_old_result_files_still_make_a_table():
    """results/bench-cpu.json was written before the provenance block (flat hardware keys)."""
    from pathlib import Path

    results = json.loads((Path(__file__).resolve().parents[1] / "results" / "bench-cpu.json").read_text())
    assert "hardware" not in results["meta"]
    assert "AMD EPYC" in benchmark.format_table(results)


@pytest.mark.slow
def test_isolated_cell_runs_in_a_subprocess(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "model")
    settings = tiny_settings(methods=("sharedllm",), lengths=(96,), isolate=True)
    results = run_benchmark(str(tmp_path / "model"), settings, progress=False)
    cell = results["cells"][0]
    assert cell["status"] == "ok", cell["reason"]
    assert cell["peak_memory_bytes"] >= 0 and cell["memory_method"].startswith("VmHWM")


def test_infllm_flops_count_the_keys_it_attends(monkeypatch):
    """The analytic key count equals what infllm_attention attends to, summed over the fed tokens of one layer."""
    from sharedllm import infllm as module
    from sharedllm.methods import load_method

    attended = module.InfLLMCache.attended
    counts = []

    def recording(self, layer, query, keys, values):
        out = attended(self, layer, query, keys, values)
        if layer == 0:
            n, seen = query.shape[2], out[0].shape[2]
            counts.append(n * (seen - n) + n * (n + 1) // 2)
        return out

    monkeypatch.setattr(module.InfLLMCache, "attended", recording)
    method = load_method("infllm", tiny_model("llama"), decoder_window=32, **TINY_INFLLM)
    method.prefill(torch.randint(3, 100, (200,)))
    assert sum(counts) == _infllm_attention_keys(200, method.describe())
    config = tiny_model("llama").config
    full, infllm = (prefill_flops(m, 200, config, TINY_KNOBS, method.describe()) for m in ("full", "infllm"))
    assert prefill_flops("window", 200, config, TINY_KNOBS) < infllm < full
