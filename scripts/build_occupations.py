#!/usr/bin/env python
"""Build ``src/gradiend_peft/corpora/occupations.en.tsv`` from the WinoGender and WinoBias repositories.

Sources (both MIT-licensed; clone them first)::

    git clone https://github.com/rudinger/winogender-schemas   # commit 1c7f8b481ad8a234b41e9f76a424d6e856e13f7f
    git clone https://github.com/uclanlp/corefBias             # commit 0bce984dd081bbc10b0622f326727a024c607895

Then::

    python scripts/build_occupations.py --winogender winogender-schemas --winobias corefBias [--out DIR]

What is taken:

- WinoGender ``data/occupations-stats.tsv``: each occupation with ``bls_pct_female`` and ``bls_year`` (the
  U.S. Bureau of Labor Statistics share of women). The ``bergsma_pct_female`` column (a text-mining statistic,
  not the BLS) is left out.
- WinoBias ``README.md``: the table "Professions and their percentages of women" (BLS figures), with the
  renamings the README itself states below the table (mechanician -> mechanic, sewer -> tailor, constructor ->
  construction worker, counselors -> counselor, hairdressers -> hairdresser).

The output has one row per occupation of either list (sorted), with the WinoGender figure and year and the
WinoBias figure side by side; a cell is empty where the list does not have the occupation. The two licence
texts are copied to ``LICENSES/``, and the file's SHA-256 is written into ``manifest.json`` (``"occupations"``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "gradiend_peft" / "corpora"
FILE = "occupations.en.tsv"
HEADER = ("occupation", "winogender_bls_pct_female", "winogender_bls_year", "winobias_bls_pct_female")
WINOBIAS_RENAMES = {
    "mechanician": "mechanic",
    "sewer": "tailor",
    "constructor": "construction worker",
    "counselors": "counselor",
    "designers": "designer",
    "hairdressers": "hairdresser",
}


def winogender(repo: Path) -> dict[str, tuple[str, str]]:
    """``{occupation: (bls_pct_female, bls_year)}`` from WinoGender's occupations-stats.tsv."""
    with open(repo / "data" / "occupations-stats.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return {row["occupation"].strip(): (row["bls_pct_female"].strip(), row["bls_year"].strip()) for row in rows}


def winobias(repo: Path) -> dict[str, str]:
    """``{occupation: pct_female}`` from the percentage table of WinoBias's README (four cells per table row)."""
    text = (repo / "README.md").read_text(encoding="utf-8")
    table = text[text.index("Professions and their percentages of women") :]
    table = table[: table.index("</table>")]
    cells = [c.strip() for c in re.findall(r"<td>(.*?)</td>", table)]
    if len(cells) != 80:
        raise SystemExit(f"expected 80 cells (40 occupations) in the WinoBias table, found {len(cells)}")
    result = {}
    for i in range(0, len(cells), 2):
        name, pct = cells[i], cells[i + 1]
        float(pct)  # a number, else fail loudly
        result[WINOBIAS_RENAMES.get(name, name)] = pct
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--winogender", type=Path, required=True, help="a clone of rudinger/winogender-schemas")
    parser.add_argument("--winobias", type=Path, required=True, help="a clone of uclanlp/corefBias")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    wg, wb = winogender(args.winogender), winobias(args.winobias)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(HEADER)
    for name in sorted(set(wg) | set(wb), key=str.lower):
        pct, year = wg.get(name, ("", ""))
        writer.writerow((name, pct, year, wb.get(name, "")))
    data = buffer.getvalue().encode("utf-8")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / FILE).write_bytes(data)
    licences = args.out / "LICENSES"
    licences.mkdir(exist_ok=True)
    (licences / "winogender-MIT.txt").write_bytes((args.winogender / "LICENSE").read_bytes())
    (licences / "corefBias-MIT.txt").write_bytes((args.winobias / "LICENSE").read_bytes())

    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    manifest["occupations"] = {
        "file": FILE,
        "language": "en",
        "licence": "MIT (WinoGender: Copyright (c) 2018 Rachel Rudinger; WinoBias: Copyright (c) 2020 "
        "Natural Language Processing @UCLA); the BLS figures are U.S. government statistics",
        "licence_file": "LICENSES/winogender-MIT.txt, LICENSES/corefBias-MIT.txt",
        "occupations": len(set(wg) | set(wb)),
        "sha256": hashlib.sha256(data).hexdigest(),
        "source": "rudinger/winogender-schemas@1c7f8b481ad8a234b41e9f76a424d6e856e13f7f data/occupations-stats.tsv "
        "(bls_pct_female, bls_year) and uclanlp/corefBias@0bce984dd081bbc10b0622f326727a024c607895 README.md "
        "(table 'Professions and their percentages of women', renamings as stated there)",
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out / FILE}: {len(set(wg) | set(wb))} occupations ({len(wg)} WinoGender, {len(wb)} WinoBias)")


if __name__ == "__main__":
    main()
