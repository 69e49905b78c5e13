"""Analysis: finished run folders under results/ into one tidy table, statistics, paper tables and figures.

Owns the loader (run folders -> DataFrame), confidence intervals and paired tests, LaTeX/Markdown/CSV tables
and seaborn figures with an index page. Reads files only: imports none of our other packages, so a report can
be made on a machine that never trained.
"""

# make_tables (the report command, also ``python -m analysis.make_tables``) is not imported here: runpy would warn
from analysis.load import Results, load_results, save_results
from analysis.stats import mean_ci, paired_diff
from analysis.tables import Table, build_table, run_scores, to_latex, to_markdown

__all__ = [
    "Results",
    "Table",
    "build_table",
    "load_results",
    "mean_ci",
    "paired_diff",
    "run_scores",
    "save_results",
    "to_latex",
    "to_markdown",
]
