"""scdl_monai.evaluation: per-case Dice/ASD/HD95, the empty-class policy, tables and plots.

See ``docs/evaluation.md``. Modules: :mod:`.policy` (the single empty-class policy),
:mod:`.metrics` (per case / per folder), :mod:`.grid` (the reference
evaluation grid), :mod:`.files` (pairing, NIfTI reading, atomic writes),
:mod:`.tables` (aggregation, CSV, Markdown), :mod:`.plots` (bar chart), :mod:`.cli` (commands).
"""

from scdl_monai.evaluation.files import case_id_from_name, load_label_volume, pair_files
from scdl_monai.evaluation.grid import parse_grid, resize_nearest
from scdl_monai.evaluation.metrics import EvaluationResult, evaluate_case, evaluate_folder, resolve_class_names
from scdl_monai.evaluation.plots import plot_class_bars
from scdl_monai.evaluation.policy import (
    REFERENCE_BOTH_EMPTY_DICE,
    REFERENCE_CONVENTIONS,
    REFERENCE_EMPTY_DISTANCE,
    REFERENCE_MODE_WARNING,
    ClassStatus,
    ReferenceConvention,
    class_status,
    empty_class_values,
    reference_warning,
    resolve_distance_cap,
)
from scdl_monai.evaluation.tables import (
    case_rows_for,
    combine_runs,
    format_markdown,
    load_summary,
    summarize_cases,
    write_csv,
)

__all__ = [
    "ClassStatus",
    "EvaluationResult",
    "REFERENCE_BOTH_EMPTY_DICE",
    "REFERENCE_CONVENTIONS",
    "REFERENCE_EMPTY_DISTANCE",
    "REFERENCE_MODE_WARNING",
    "ReferenceConvention",
    "case_id_from_name",
    "case_rows_for",
    "class_status",
    "combine_runs",
    "empty_class_values",
    "evaluate_case",
    "evaluate_folder",
    "format_markdown",
    "load_label_volume",
    "load_summary",
    "pair_files",
    "parse_grid",
    "plot_class_bars",
    "reference_warning",
    "resize_nearest",
    "resolve_class_names",
    "resolve_distance_cap",
    "summarize_cases",
    "write_csv",
]
