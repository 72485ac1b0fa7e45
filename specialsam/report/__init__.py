"""Files made from results: the rules report (markdown.py + plots.py) and per-trial pictures (figures.py).

This package reads ``specialsam.analysis`` results and writes files; analysis never imports it.
"""
