"""`nas describe`, `nas presets`, `nas --help`: output and one-line errors with exit code 2."""
import subprocess
import sys

import pytest

from nas.cli import COMMANDS, main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_describe_preset(capsys):
    code, out, _ = run_cli(capsys, "describe", "xcit-n12")
    assert code == 0
    assert "3,053,224" in out and "xcit_nano_12_p16_224" in out and "1.102 G" in out


def test_describe_small_images(capsys):
    code, out, _ = run_cli(capsys, "describe", "xcit-n12-fsne", "--num-classes", "10", "--img-size", "8",
                           "--in-chans", "1", "--patch-size", "2")
    assert code == 0 and "F-SNE" in out and "at 10 classes" in out


def test_describe_json_file(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "describe", "xcit-n12-psne", "--json")
    path = tmp_path / "arch.json"
    path.write_text(out)
    code, again, _ = run_cli(capsys, "describe", str(path), "--json")
    assert code == 0 and again == out


def test_presets_table(capsys):
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0
    for name in ("xcit-n12", "xcit-t12", "deit-tiny", "xcit-n12-sne", "xcit-n12-psne", "xcit-n12-fsne"):
        assert name in out


@pytest.mark.parametrize("argv,fragment", [
    (["describe", "xcit-huge"], "unknown preset 'xcit-huge'"),
    (["describe", "missing.json"], "missing.json: not found"),
    (["describe", "xcit-n12", "--img-size", "8"], "img_size=8 with patch_size=16"),
])
def test_describe_errors_are_one_line_exit_2(capsys, argv, fragment):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_malformed_json_file(capsys, tmp_path):
    path = tmp_path / "arch.json"
    path.write_text('{"embed_dim": 64,')
    code, _, err = run_cli(capsys, "describe", str(path))
    assert code == 2 and str(path) in err and "malformed" in err and err.count("\n") == 1


def test_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "nas.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


def test_bad_budget_flag_through_argparse(capsys):
    import argparse

    from nas.budget import budget_argument

    parser = argparse.ArgumentParser(prog="nas search")
    parser.add_argument("--budget", type=budget_argument)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--budget", "3.1X"])
    assert exit_info.value.code == 2
    assert "'3.1X': expected a positive count" in capsys.readouterr().err
