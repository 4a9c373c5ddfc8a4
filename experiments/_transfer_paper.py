"""Shared body of the per-paper transfer experiments (``shafahi2018``, ``zhu2019``, ``aghakhani2021``):
one attack of :mod:`experiments.schwarzschild2021`'s protocol, with the paper's own numbers printed beside."""

from __future__ import annotations

from typing import Any, Sequence

from experiments import _cli, schwarzschild2021


def run(attack: str, paper_lines: Sequence[str], argv: Sequence[str] | None, default_out: str,
        extra: Sequence[str] = ()) -> dict[str, Any]:
    argv = list(argv or [])
    if "--attacks" in argv:
        raise SystemExit("--attacks is fixed by this experiment; use experiments.schwarzschild2021 for several")
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", default_out]
    res = schwarzschild2021.main(["--attacks", f"none,{attack}", *extra, *argv])  # with the clean control
    print("the paper (its own protocol, not this one):")
    for line in paper_lines:
        print("  " + line)
    res["paper_own_protocol"] = list(paper_lines)
    _cli.write_json_atomic(_cli.ensure_dir(res["out"]) / "results.json", res)
    return res
