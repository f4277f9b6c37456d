"""``python -m scdl_monai.evaluation {evaluate,table} ...`` (fire CLI; see :mod:`scdl_monai.evaluation.cli`)."""

import fire

from scdl_monai.evaluation.cli import evaluate, table


def main() -> None:
    """Dispatch to the commands; user errors exit with status 1 and one ``error:`` line."""
    fire.Fire({"evaluate": evaluate, "table": table})


if __name__ == "__main__":
    main()
