"""``STAT_TABLE`` in bpf/shared.h is the one table of what each ``enum stat`` means: Python's
``Stat`` takes its verdicts and help texts from it (the C side is checked against gcc in
tests/bpf/test_layout.py)."""

from __future__ import annotations

from icegate.bpf import source_dir

from controlplane.datapath.layout import Stat, Verdict, stat_table

PREFIX = {"PASS": Verdict.PASS, "FWD": Verdict.FORWARD, "SLOW": Verdict.SLOW, "DROP": Verdict.DROP}


def test_stat_mirrors_the_table_row_by_row() -> None:
    rows = stat_table()
    assert [name for name, _, _ in rows] == [s.name for s in Stat]
    for (name, verdict, help_text), stat in zip(rows, Stat, strict=True):
        assert (stat.verdict, stat.help) == (verdict, help_text) and help_text, name
        assert PREFIX[name.split("_", 1)[0]] is verdict, f"{name}: its name says another verdict"


def test_an_appended_row_is_classified_by_its_row() -> None:
    header = (source_dir() / "shared.h").read_text()
    last = f'"{stat_table()[-1][2]}")'  # the last row, whoever appended it
    appended = header.replace(last, last[:-1] + ') \\\n\tX(PASS_SOMETHING_NEW, DROP, "a new counter")', 1)
    assert appended != header
    assert stat_table(appended)[-1] == ("PASS_SOMETHING_NEW", Verdict.DROP, "a new counter")
    assert len(stat_table(appended)) == len(Stat) + 1
