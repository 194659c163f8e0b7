#!/usr/bin/env python
"""Re-write the repository's records with portable paths: every git-tracked (or new, not ignored) record
under ``benchmarks/``, ``examples/`` and ``docs/`` (``.json``, ``.jsonl``, ``.md``, ``.txt``, ``.yaml``,
``.csv``; code is not touched) has each absolute path of a machine replaced by ``_runs.portable_path``:

* a file of this repository (of any checkout of it): relative to the repository root;
* a folder of the dataset cache (``timm_gsp.data.default_cache_root()``): ``<cache>/<name>``, e.g.
  ``<cache>/scenes-s0-v1``;
* a run's own folder in its ``results.json`` (``"output"``): the folder the record is in now;
* anything else: ``<elsewhere>/<its last name>``.

Nothing else changes (numbers, keys, layout); a file is re-written atomically and only if a path in it
changes, and the files of unfinished runs (``metrics.jsonl`` without ``results.json``) are left to the
next pass. Idempotent: run it again whenever records were made by an older harness.

    python benchmarks/scrub_records.py            # prints the files it re-wrote
"""
from __future__ import annotations

import argparse

from _runs import ROOT, scrub_records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", default=["benchmarks", "examples", "docs"],
                   help="folders of the repository to scrub (default: benchmarks examples docs)")
    a = p.parse_args()
    changed = scrub_records(a.folders)
    for path in changed:
        print(path.relative_to(ROOT).as_posix())
    print(f"{len(changed)} records re-written")


if __name__ == "__main__":
    main()
