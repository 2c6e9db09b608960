"""User-caused OS errors in the CLI: one line naming the path, a non-zero exit, a traceback only with --debug."""

from __future__ import annotations

import errno

import pytest
from click.testing import CliRunner

from schemabuild.cli import main, os_error_line


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


def test_runs_dir_that_is_a_file_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = run("synth", "tool_picker", "--n", "4", "--runs-dir", str(afile))
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert str(afile) in line and "not a folder" in line


def test_binary_input_file_is_one_line_naming_the_file(tmp_path):
    binary = tmp_path / "log.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x81binary")
    result = run("synth", "tool_picker", "--n", "4", "--from-log", str(binary), "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert str(binary) in result.output and "not UTF-8" in result.output


def test_debug_flag_and_env_keep_the_traceback(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, env in ((["--debug"], None), ([], {"SCHEMABUILD_DEBUG": "1"})):
        result = run(*args, "synth", "tool_picker", "--n", "4", "--runs-dir", str(afile), env=env)
        assert result.exit_code != 0
        assert isinstance(result.exception, NotADirectoryError)


@pytest.mark.parametrize("code, words", [
    (errno.EACCES, "permissions"), (errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full"),
    (errno.ENOTDIR, "not a folder"),
])
def test_each_user_errno_names_the_path_and_what_to_do(code, words):
    line = os_error_line(OSError(code, "reason", "/some/where"))
    assert line.startswith("/some/where: reason;") and words in line and "\n" not in line


def test_read_only_file_system_through_the_cli():
    # /sys is mounted read-only (EROFS/EPERM even for root): a real, unprivileged-independent failure.
    result = run("synth", "tool_picker", "--n", "4", "--runs-dir", "/sys/schemabuild-test-runs")
    assert result.exit_code == 1, result.output
    assert "/sys/schemabuild-test-runs" in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0
