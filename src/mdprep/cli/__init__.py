"""The ``mdprep`` command: a thin layer over the library.

Each command parses options, calls one library function, writes its result and
prints a summary on stderr. Library and environment errors become ``Error: ...``
and exit code 2 in one place (:class:`MdprepGroup`); exit code 1 means a check ran
and failed; an unexpected exception is a bug, exit code 3.
"""

from __future__ import annotations

import click

from .. import __version__
from ._ui import reported_errors, termination_unwinds


class MdprepGroup(click.Group):
    """A click group that maps every library error of its commands in one place.

    SIGTERM and SIGHUP unwind the command like Ctrl-C (:func:`._ui.termination_unwinds`),
    so no temporary file of an atomic write is left behind.
    """

    def invoke(self, ctx: click.Context):
        with reported_errors(), termination_unwinds():
            return super().invoke(ctx)


@click.group(
    cls=MdprepGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Example:
  mdprep demo                                   # the whole pipeline on a generated cohort
  mdprep ingest table Data_Entry_2017.csv.gz --preset nih -o nih.parquet
  mdprep split nih.parquet --ratios 0.7,0.1,0.2 --seed 0 -o nih-split.parquet
  mdprep check nih-split.parquet --junit check.xml
  mdprep export nih-split.parquet --format hf -o nih-hf/

Shell completion: eval "$(_MDPREP_COMPLETE=bash_source mdprep)" (docs/getting-started.md).

Exit codes: 0 success, 1 a check failed, 2 bad input, usage or environment, 3 a bug in mdprep.
""",
)
@click.version_option(__version__, prog_name="mdprep")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error (exit code 3); also MDPREP_DEBUG=1.")
def main(debug: bool) -> None:
    """Prepare medical-imaging datasets for deep learning and prove they are safe to train on."""


from .audit import audit_leakage, check, hash_cmd, report  # noqa: E402
from .balance import resample, weights  # noqa: E402
from .demo import demo  # noqa: E402
from .export import export  # noqa: E402
from .ingest import ingest  # noqa: E402
from .pseudonymize import keygen, pseudonymize_cmd  # noqa: E402
from .split import split  # noqa: E402
from .train import train  # noqa: E402
from .validate import validate  # noqa: E402

main.add_command(ingest)
main.add_command(split)
main.add_command(hash_cmd)
main.add_command(audit_leakage)
main.add_command(check)
main.add_command(report)
main.add_command(weights)
main.add_command(resample)
main.add_command(train)
main.add_command(export)
main.add_command(keygen)
main.add_command(pseudonymize_cmd)
main.add_command(validate)
main.add_command(demo)
