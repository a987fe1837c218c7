"""Every message is petseg's: a composite option's value that cannot be read (a range, a schedule, a
duration, NAME=HASH, a URL, a colour, a device) gets one line naming the form it takes, with an example,
and exit code 2, never the words of the Python call that failed to parse it."""

from __future__ import annotations

import pytest

from conftest import invoke_cli

# What Python and its parsers say, which a user should never read.
PYTHON_WORDS = (
    "Traceback", "could not convert", "not enough values", "too many values", "invalid literal", "unpack",
    "ValueError", "TypeError", "KeyError", "IndexError", "object has no attribute", "unsupported operand",
    "Value error", "Input should be",
)

# (the command and its other arguments, the option, a value it cannot use). Each command's positional
# argument names a path that does not exist: the option is checked before anything is read.
MALFORMED = [
    *((["evaluate", "nope"], "--thresholds", bad) for bad in (
        "0.3:0.9", "abc", "0.3:0.9:x", ",", "1:2:3:4", "0.3:0.9:0", "0.1:0.9:1e-9", "nan", "0.2:0.8:-0.1", "0.5,1.5",
    )),
    *(([ "train"], "--time", bad) for bad in ("abc", "5x", "-1m", "1.5d", "nan", "m")),
    *((["train"], "--image-size", bad) for bad in ("128:", ":256", "12a", "128:256:384", "256:128", "1e3", "-64")),
    *((["train"], "--size-schedule", bad) for bad in ("128@", "abc", "128@0,256", "@0", "128@x", "64@0.5", "64@0,32@0.5", "x:y")),
    *((["download"], "--md5", bad) for bad in ("images", "=abc", "foo=abc", "images=zz")),
    *((["download"], "--mirror", bad) for bad in ("ftp://example.org/", "pets.example")),
    *((["compare", "nope"], "--columns", bad) for bad in (",,", " , ")),
    *((["infer", "nope.png"], "--background", bad) for bad in ("notacolour", "rgb(999,0,0)", "#12", "hsl(x)")),
    *((["train"], "--device", bad) for bad in ("cuda:x", "gpu", "cuda:-1")),
]


@pytest.mark.parametrize(("command", "option", "value"), MALFORMED, ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_a_malformed_value_is_one_line_of_petseg_s_own_naming_the_option(tmp_path, command, option, value):
    result = invoke_cli(*command, option, value, "--data-dir", str(tmp_path / "none"), cwd=tmp_path) if command == ["train"] else (
        invoke_cli(*command, option, value, cwd=tmp_path)
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {option}"), lines[0]
    assert not [word for word in PYTHON_WORDS if word in result.stderr], result.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.parametrize(("option", "value"), [("--thresholds", "0.3:0.9"), ("--time", "abc"), ("--image-size", "128:"),
                                               ("--size-schedule", "128@"), ("--md5", "images"), ("--columns", ",,")])
def test_a_form_error_names_the_form_and_gives_an_example(tmp_path, option, value):
    command = {"--thresholds": ["evaluate", "nope"], "--md5": ["download"], "--columns": ["compare", "nope"]}.get(option, ["train"])
    message = invoke_cli(*command, option, value, cwd=tmp_path).stderr
    assert f"{option} expects " in message and ", e.g. " in message and f"(got {value!r}" in message, message


def test_a_finished_run_without_best_pth_points_to_its_last_weights_and_that_command_works(tiny_run, tmp_path):
    """`--resume` refuses a finished run (its optimiser state dropped): the hint is --weights last, which
    the test then runs as written; without either file, a new run."""
    import shlex
    import shutil

    from PIL import Image

    from synthetic import photo

    run = tmp_path / "finished"
    shutil.copytree(tiny_run, run)
    (run / "best.pth").unlink()
    Image.fromarray(photo(48, 40)).save(tmp_path / "cat.jpg")
    for command in (["infer", "cat.jpg", "--run", str(run)], ["evaluate", str(run)]):
        failed = invoke_cli(*command, cwd=tmp_path)
        assert failed.returncode == 1 and "--resume" not in failed.stderr, failed.stderr
        assert failed.stderr.strip().endswith("its last.pth is there: --weights last"), failed.stderr
    hinted = shlex.split(failed.stderr.rpartition(": ")[2])
    assert invoke_cli("infer", "cat.jpg", "--run", str(run), *hinted, "-o", "masks", cwd=tmp_path).returncode == 0
    (run / "last.pth").unlink()
    failed = invoke_cli("infer", "cat.jpg", "--run", str(run), "-o", "more", cwd=tmp_path)
    assert failed.returncode == 1 and "train a new run (petseg train)" in failed.stderr and "--resume" not in failed.stderr


def test_a_run_that_does_not_exist_is_said_so_alike_by_every_command(tmp_path):
    for command in (["evaluate"], ["infer", "cat.jpg", "--run"], ["export"], ["serve"]):
        result = invoke_cli(*command, "runs/nope", cwd=tmp_path)
        assert result.returncode == 2 and "runs/nope does not exist: pass a run directory" in result.stderr, (command, result.stderr)
