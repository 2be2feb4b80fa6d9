"""The `tbq` command driven in-process, and the one-line-error contract its tests check."""

from typer.testing import CliRunner

from tbq_cli.main import app

runner = CliRunner()


def cli(*args):
    """Invoke `tbq ARGS` (each argument str()-ed); returns Click's Result."""
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, *words) -> str:
    """Exit code 2, exactly one `error:` line, no traceback, and every word in that line; returns the line."""
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]
