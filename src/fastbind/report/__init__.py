"""Reports: what the runs of one family of experiments say, as markdown tables and PNG figures.

One module per family, each with a ``build_*_report(run_dirs, out, ...)`` that reads run
folders through :class:`fastbind.runs.RunFolder`, renders everything, then writes into
``out``:

* :mod:`fastbind.report.lm`: language-model runs (``lm-train``, ``lm-eval``, ``lm-sweep``,
  ``demo``): validation curves, perplexity by frequency bucket, a Table-2-style table;
* :mod:`fastbind.report.curriculum`: the Omniglot curriculum (``curriculum``);
* :mod:`fastbind.report.catbabi`: catbAbI (``catbabi``): accuracy per bAbI task;
* :mod:`fastbind.report.continual`: continual learning (``continual``);
* :mod:`fastbind.report.metarl`: meta-RL (``metarl``): test and training reward over episodes.

:mod:`fastbind.report.plots` and :mod:`fastbind.report.common` hold what they share. Which
family a folder belongs to is written in it (:meth:`fastbind.runs.RunFolder.recipe`); the
``fastbind report`` command maps recipes to these modules. A new family of experiments adds
a module here and a line to that map.
"""
