"""The `nas` front door: describe, presets, --help, one-line errors with exit code 2, and the import rules."""
import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import COMMANDS
from nas.settings.flags import positive_int

ROOT = Path(__file__).resolve().parents[2]


def test_describe_preset(cli):
    code, out, _ = cli("describe", "xcit-n12")
    assert code == 0
    assert "3,053,224" in out and "xcit_nano_12_p16_224" in out and "1.102 G" in out


def test_describe_small_images(cli):
    code, out, _ = cli("describe", "xcit-n12-fsne", "--num-classes", "10", "--img-size", "8", "--in-chans", "1",
                       "--patch-size", "2")
    assert code == 0 and "F-SNE" in out and "at 10 classes" in out


def test_describe_json_file(cli, tmp_path):
    code, out, _ = cli("describe", "xcit-n12-psne", "--json")
    path = tmp_path / "arch.json"
    path.write_text(out)
    code, again, _ = cli("describe", path, "--json")
    assert code == 0 and again == out


def test_presets_table(cli):
    code, out, _ = cli("presets")
    assert code == 0
    for name in ("xcit-n12", "xcit-t12", "deit-tiny", "xcit-n12-sne", "xcit-n12-psne", "xcit-n12-fsne"):
        assert name in out


@pytest.mark.parametrize("argv,fragment", [
    (["describe", "xcit-huge"], "unknown preset 'xcit-huge'"),
    (["describe", "missing.json"], "missing.json: not found"),
    (["describe", "xcit-n12", "--img-size", "8", "--patch-size", "16"], "img_size=8 with patch_size=16"),
    (["search", "--budget", "3.1X"], "'3.1X': expected a positive count"),
    (["search", "--budget", "3.1M", "--trials", "0"], "argument --trials: 0: expected a positive integer"),
])
def test_errors_are_one_line_exit_2(cli, argv, fragment):
    code, out, err = cli(*argv)
    assert code == 2
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_malformed_json_file(cli, tmp_path):
    path = tmp_path / "arch.json"
    path.write_text('{"embed_dim": 64,')
    code, _, err = cli("describe", path)
    assert code == 2 and str(path) in err and "malformed" in err and err.count("\n") == 1


def test_help_lists_every_command_without_importing_torch_or_ray():
    probe = ("import sys; from nas.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit as done:\n    code = done.code\n"
             "print('loaded:', sorted(name for name in ('torch', 'ray', 'pandas', 'optuna') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert name in result.stdout
    assert "loaded: []" in result.stdout


def test_every_command_builds_its_parser():
    for name in COMMANDS:
        result = subprocess.run([sys.executable, "-m", "nas.cli", name, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: nas " + name in result.stdout, result.stderr


def command_flags(name: str) -> list:
    import argparse

    from nas.cli import build_parser

    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return [action for action in sub._actions
            if action.option_strings and action.dest != "help" and action.help != argparse.SUPPRESS]


def test_help_text_speaks_one_vocabulary():
    """Every flag says what it does, no two flags of a command say the same; --trials is a count wherever it
    is taken (trial ids are --trial-ids), and --device takes the same values everywhere."""
    for name in COMMANDS:
        helps = [action.help for action in command_flags(name)]
        assert all(helps), f"nas {name}: a flag without help"
        assert len(set(helps)) == len(helps), f"nas {name}: two flags share one description"
    trials = [action for name in COMMANDS for action in command_flags(name) if "--trials" in action.option_strings]
    assert trials and all(action.type is positive_int for action in trials)
    devices = [action.help for name in COMMANDS for action in command_flags(name) if action.dest == "device"]
    assert len(devices) >= 4 and all("auto (default), cpu, cuda or cuda:N" in text for text in devices)


# nas search's live view: a bar on a terminal, lines otherwise; nas show's units; the time left

def view_trials(running: int = 1, curve_of_running: tuple = (0.3, 0.4)):
    """Three trained trials (10 s an epoch, 10-epoch trials) and `running` trials two epochs in."""
    from conftest import TINY
    from nas.runs.results import trial_row, trials_frame

    rows = [trial_row(0, "complete", arch=TINY, params=1000, seed=0, curve=[0.5] * 10, seconds=100.0),
            trial_row(1, "stopped", arch=TINY.replace(depth=2), params=1100, seed=1, curve=[0.2, 0.3], seconds=20.0),
            trial_row(2, "complete", arch=TINY.replace(depth=3), params=1200, seed=2, curve=[0.6] * 9 + [0.9582],
                      seconds=100.0)]
    rows += [trial_row(3 + index, "running", arch=TINY.replace(embed_dim=32 + 16 * index), params=1300, seed=3,
                       curve=list(curve_of_running), seconds=20.0) for index in range(running)]
    return trials_frame(rows)


def progress_line(trials, target: int):
    from nas.engine.progress import Progress
    from qkvnas_core.log import Forward, handled_by

    lines = []
    with handled_by(Forward(lines.append)):
        Progress(target, 0, epochs=10).show(trials, force=True)
    return lines[0]


def test_time_left_while_the_last_trial_runs_is_that_trials_own_epochs_left():
    from qkvnas_core.units import format_duration

    line = progress_line(view_trials(running=1), target=4)
    assert line.seconds_left == 8 * 10  # 8 epochs left at its 10 s an epoch, whatever the others took
    assert f"~{format_duration(80)} left" in line


def test_time_left_shares_the_trials_to_come_among_those_running():
    line = progress_line(view_trials(running=2), target=8)
    per_trial = (100 + 20 + 100) / 3  # the mean trained trial
    assert line.seconds_left == pytest.approx((2 * 8 * 10 + 3 * per_trial) / 2)


def test_progress_says_val_acc_in_the_units_nas_show_does(tmp_path, make_run):
    from nas.commands.show import runs_overview
    from nas.runs.results import load_trials

    run = make_run(tmp_path / "run")
    header, row = runs_overview(tmp_path).splitlines()
    best = row[header.index("best val_acc"):].split()[0]
    assert best == "90.00%"  # conftest's best curve ends at 0.90
    assert f"best val_acc {best}" in progress_line(load_trials(run), target=4)


def test_a_terminal_gets_a_live_bar_and_other_lines_above_it():
    import io

    from nas.commands.search import LiveView

    out = io.StringIO()
    with LiveView(out, terminal=True) as view:
        view.say("stopped 2 Ray processes the killed session left running")
        view.say(progress_line(view_trials(running=1), target=4))
    text = out.getvalue()
    assert "stopped 2 Ray processes" in text and "3/4 trained" in text and "1 running" in text
    assert "best val_acc 95.82%" in text and "~1m20s left" in text and "\r" in text


def test_without_a_terminal_the_lines_are_printed_as_they_come():
    import io

    from nas.commands.search import LiveView

    out = io.StringIO()
    line = progress_line(view_trials(running=1), target=4)
    with LiveView(out) as view:
        view.say("a note")
        view.say(line)
    assert out.getvalue() == f"a note\n{line}\n"


@pytest.mark.parametrize("argv, fragment", [
    (["--resume"], "--resume: expected the run to continue, nas search RUN --resume"),
    (["results/x", "--budget", "1M"], "results/x: a run to continue takes --resume"),
])
def test_search_resumes_a_run_given_as_its_argument(cli, argv, fragment):
    code, _, err = cli("search", *argv)
    assert code == 2 and fragment in err and err.count("\n") == 1


def test_time_left_moves_with_the_epochs_run_not_with_each_trials_speed():
    """Two trials at once, 10 s an epoch: 20 s later one has ended and a new one spent 40 s on its first epoch (its
    start-up). The work left fell by the 4 epochs run, and so does the estimate; the old one, from each running
    trial's own pace, doubled (9 epochs at 40 s)."""
    from nas.engine.progress import seconds_left
    from nas.runs.results import trial_row, trials_frame
    from conftest import TINY

    def trial(number, state, epochs, seconds):
        return trial_row(number, state, arch=TINY.replace(embed_dim=16 * (number + 1)), params=1000, seed=number,
                         curve=[0.5] * epochs, seconds=seconds)

    ended = [trial(index, "complete", 10, 100.0) for index in range(3)]
    before = trials_frame([*ended, trial(3, "running", 5, 50.0), trial(4, "running", 9, 90.0)])
    after = trials_frame([*ended, trial(3, "running", 7, 70.0), trial(4, "complete", 10, 100.0),
                          trial(5, "running", 1, 40.0)])
    first, second = seconds_left(before, 8, 10, slots=2), seconds_left(after, 8, 10, slots=2)
    # epochs left: 5 + 1 + 3 trials to start x 10 = 36 at 10 s on 2 slots; then 3 + 9 + 2 x 10 = 32 at 510 / 48 s
    assert first == pytest.approx(36 / 2 * 10)
    assert second == pytest.approx(32 / 2 * 510 / 48)
    assert second < first
