"""Reports: read run records (:mod:`repshift.record`) and draw them — tables, figures, the HTML page, the
claims ledger. Nothing here builds a model, reads a dataset or times a benchmark; the code that computes
score maps from a model lives with the runner (:mod:`repshift.maps`) and hands this package arrays.

- :mod:`repshift.report.core`: the tables' core (cells, Δ, speed-ups, which record a cell uses, rendering,
  the registry); :mod:`~repshift.report.image_tables` and :mod:`~repshift.report.video_tables` register the
  builders; :mod:`~repshift.report.tables` is the filled registry (``TABLES``, ``build``).
- :mod:`repshift.report.figures`: per-layer accuracy figures (Figs. 3 / 5, readings), saving figures;
  :mod:`repshift.report.maps`: the one overlay-grid renderer of every score-map figure (Figs. 4 / 6 / 7);
  :mod:`repshift.report.fig1`: Fig. 1's scatter.
- :mod:`repshift.report.claims`: the paper's headline claims (``claims.yaml``) and a verdict for each.
- :mod:`repshift.report.html`: one self-contained page.
- ``python -m repshift.report --help``: the command line.

No module here imports model, adapter, data or benchmark code (tests/test_report.py reads the imports), nor
torch; pandas and matplotlib load with the modules that need them. The parent package does load torch:
``import repshift`` brings ``repshift.patch`` for ``repshift.patch(model, ...)``.
"""
