"""`nas show`: one run's summary, the list of runs, and bad paths."""
from __future__ import annotations

from nas.cli import main
from conftest import FSNE, TINY, write_run


def test_run_summary(tmp_path, capsys):
    run = write_run(tmp_path / "results" / "r1")
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "dataset      digits" in out and "budget       100K params" in out
    assert "trials: 4 (2 complete, 1 stopped, 1 infeasible)" in out
    assert "top 3 by val_acc" in out and "Pareto front over params (2 of the 2 trials scored at full fidelity, 3 epochs)" in out
    assert out.index("t0001") < out.index("t0000")  # best first
    assert f"best: trial t0001 {FSNE.summary()}" in out
    assert "12s wall" in out


def test_list_of_runs(tmp_path, capsys):
    results = tmp_path / "results"
    write_run(results / "r1")
    write_run(results / "r2", rows=[("t0000", TINY, "complete", [0.42])])
    (results / "not-a-run").mkdir()
    assert main(["show", "--results-dir", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "trained" in lines[0]
    assert lines[1].split()[:2] == ["r1", "digits"] and "90.00%" in lines[1]
    assert lines[2].split()[0] == "r2" and "42.00%" in lines[2]


def test_run_name_is_found_under_results_dir(tmp_path, capsys):
    write_run(tmp_path / "results" / "named")
    assert main(["show", "named", "--results-dir", str(tmp_path / "results")]) == 0
    assert "run " in capsys.readouterr().out


def test_empty_run_and_bad_paths(tmp_path, capsys):
    empty = write_run(tmp_path / "results" / "empty", rows=[("t0000", TINY, "infeasible", [])])
    assert main(["show", str(empty)]) == 0
    assert "no trial has a validation accuracy yet" in capsys.readouterr().out
    for argv, fragment in ((["show", str(tmp_path / "nowhere")], "not found"),
                           (["show", "--results-dir", str(tmp_path / "none")], "results folder"),
                           (["show", str(empty), "--best", "0"], "argument --best: 0")):
        try:
            code = main(argv)
        except SystemExit as done:  # argparse's own errors exit from the parser
            code = done.code
        assert code == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1
