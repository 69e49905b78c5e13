"""Analysis: finished run folders under results/ into one tidy table, statistics, paper tables and figures.

Owns the loader (run folders -> DataFrame), confidence intervals and paired tests, LaTeX/Markdown/CSV tables
and seaborn figures with an index page. Reads files only: imports none of our other packages, so a report can
be made on a machine that never trained.
"""

__all__: list[str] = []
