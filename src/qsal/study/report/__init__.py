"""Reports: results rows -> a markdown table, figures and one self-contained HTML file.

``html`` lays the page out, ``tables`` holds the text (results, environment, glossary), ``plots`` the
trade-off and diagnostic figures, ``saliency`` the explanation grids.
"""

from qsal.study.report.html import write_report
from qsal.study.report.plots import pareto_front, robust_pareto_front, tradeoff_plot
from qsal.study.report.tables import results_table

__all__ = ["write_report", "results_table", "pareto_front", "robust_pareto_front", "tradeoff_plot"]
