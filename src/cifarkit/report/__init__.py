"""A run explained: its figures (RUN/plots/*.png) and its report (RUN/report.md, report.html).

`write_plots` needs the trained model and the data; `write_report` needs only the run folder's files.
"""

from cifarkit.report.content import read_history, write_report
from cifarkit.report.figures import augmented_views, samples_figure, write_plots

__all__ = ["augmented_views", "read_history", "samples_figure", "write_plots", "write_report"]
